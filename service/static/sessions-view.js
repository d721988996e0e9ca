// "Where you are logged in" (GET /api/sessions): each live session with when it began, when
// it was last seen and its browser, this device marked; ending one (DELETE
// /api/sessions/{id}) and logging out everywhere (POST /api/logout?everywhere=true).

import * as api from './api.js';
import { Modal, announce, setError } from './dialog.js';
import { formatDateTime, h } from './render.js';

export class SessionsDialog {
  #modal;
  #el;
  #asked = 0;
  #busy = false;

  /**
   * @param {{onSignedOut(message: string): void}} hooks
   * @param {AbortSignal} signal
   */
  constructor(hooks, signal) {
    const $ = (id) => document.getElementById(id);
    this.hooks = hooks;
    this.#el = {
      title: $('sessions-title'), list: $('sessions-list'), status: $('sessions-status'),
      error: $('sessions-error'), start: $('everywhere-start'), confirm: $('everywhere-confirm'),
      cancel: $('everywhere-cancel'), confirmButton: $('everywhere-confirm-button'),
    };
    const on = (el, type, fn) => el.addEventListener(type, fn, { signal });
    this.#modal = new Modal($('sessions-dialog'), {}, signal);
    on(this.#el.list, 'click', (e) => {
      const button = e.target.closest('button[data-session]');
      if (button) this.#end(button.dataset.session, button.dataset.current === 'true');
    });
    on(this.#el.start, 'click', () => this.#ask(true));
    on(this.#el.cancel, 'click', () => this.#ask(false));
    on(this.#el.confirmButton, 'click', () => this.#everywhere());
  }

  open() {
    setError(this.#el.error, '');
    this.#ask(false);
    this.#modal.open(this.#el.title);
    this.refresh();
  }

  close() {
    this.#modal.close();
  }

  async refresh() {
    const asked = ++this.#asked;
    this.#el.list.setAttribute('aria-busy', 'true');
    let sessions;
    try {
      sessions = await api.sessions();
    } catch (err) {
      if (asked === this.#asked) {
        this.#el.list.removeAttribute('aria-busy');
        setError(this.#el.error, `Could not load your sessions: ${err.message}`);
      }
      return;
    }
    if (asked !== this.#asked) return;
    this.#el.list.removeAttribute('aria-busy');
    const list = Array.isArray(sessions) ? sessions : [];
    // This device first, then the rest newest first (the server's order).
    list.sort((a, b) => Number(Boolean(b.current)) - Number(Boolean(a.current)));
    this.#el.list.replaceChildren(...list.map(sessionItem));
    const n = list.length;
    this.#el.status.textContent = `${n} session${n === 1 ? '' : 's'}.`;
  }

  async #end(id, current) {
    if (this.#busy) return;
    this.#busy = true;
    setError(this.#el.error, '');
    try {
      await api.endSession(id);
      if (current) {
        this.#modal.close();
        this.hooks.onSignedOut('You logged out of this session.');
        return;
      }
      announce('Session ended.');
      await this.refresh();
      this.#el.title.focus();
    } catch (err) {
      setError(this.#el.error, err.status === 404
        ? 'That session had already ended.' : `Could not end the session: ${err.message}`);
      await this.refresh();
    } finally {
      this.#busy = false;
    }
  }

  #ask(asking) {
    this.#el.confirm.hidden = !asking;
    this.#el.start.hidden = asking;
    if (asking) this.#el.cancel.focus();
  }

  async #everywhere() {
    if (this.#busy) return;
    this.#busy = true;
    try {
      await api.logoutEverywhere();
      this.#modal.close();
      this.hooks.onSignedOut('You are logged out on every device.');
    } catch (err) {
      setError(this.#el.error, `Could not log out everywhere: ${err.message}`);
      this.#ask(false);
    } finally {
      this.#busy = false;
    }
  }
}

function sessionItem(session) {
  const current = Boolean(session.current);
  const agent = session.user_agent || '';
  const label = describeAgent(agent);
  return h('li', {
    class: current ? 'listed session is-current' : 'listed session',
    'data-testid': 'session', 'data-current': String(current), 'data-session': session.id,
  },
  h('span', { class: 'listed-main' },
    h('span', { class: 'listed-name' }, label,
      current ? h('span', { class: 'this-device', 'data-testid': 'this-device' }, 'This device') : null),
    h('span', { class: 'listed-meta' },
      `Logged in ${formatDateTime(session.created_at)} · last seen ${formatDateTime(session.last_seen_at)}`),
    agent ? h('span', { class: 'listed-agent', title: agent }, agent) : null),
  h('button', {
    type: 'button', class: 'btn btn-secondary btn-small', 'data-session': session.id,
    'data-current': String(current), 'data-testid': 'session-end',
    // The visible words first (WCAG 2.5.3), then which session they end.
    'aria-label': current ? 'Log out on this device'
      : `End session: ${label}, logged in ${formatDateTime(session.created_at)}`,
  }, current ? 'Log out' : 'End session'));
}

/** "Chrome on Linux" from a User-Agent header; the header itself when it says neither. */
export function describeAgent(agent) {
  if (!agent) return 'Unknown browser';
  const browser = [
    [/Edg(e|A|iOS)?\//, 'Edge'], [/OPR\//, 'Opera'], [/Firefox\//, 'Firefox'],
    [/HeadlessChrome\//, 'Headless Chrome'], [/Chromium\//, 'Chromium'], [/Chrome\//, 'Chrome'],
    [/Safari\//, 'Safari'], [/^curl\//, 'curl'], [/python-httpx|python-requests|aiohttp/, 'A script'],
  ].find(([re]) => re.test(agent))?.[1];
  const system = [
    [/Android/, 'Android'], [/iPhone|iPad|iPod/, 'iOS'], [/CrOS/, 'ChromeOS'],
    [/Windows/, 'Windows'], [/Mac OS X|Macintosh/, 'macOS'], [/Linux/, 'Linux'],
  ].find(([re]) => re.test(agent))?.[1];
  if (browser && system) return `${browser} on ${system}`;
  return browser ?? system ?? agent.slice(0, 60);
}
