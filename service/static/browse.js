// "Public rooms" (GET /api/rooms/public?q=): every public room by name, narrowed by a name
// prefix as you type, a page at a time. Opening one joins it.

import * as api from './api.js';
import { Modal, setError } from './dialog.js';
import { h, kindIcon, relativeTime, parseDate } from './render.js';

const SEARCH_AFTER_MS = 200;
const PAGE = 50;

export class BrowseDialog {
  #modal;
  #q;
  #list;
  #status;
  #more;
  #error;
  #cursor = null;
  #asked = 0;
  #timer = 0;

  /**
   * @param {{onOpen(room: string): void, isMine(room: string): boolean}} hooks
   * @param {AbortSignal} signal
   */
  constructor(hooks, signal) {
    const $ = (id) => document.getElementById(id);
    this.hooks = hooks;
    this.#modal = new Modal($('browse-dialog'), {}, signal);
    this.#q = $('browse-q');
    this.#list = $('browse-list');
    this.#status = $('browse-status');
    this.#more = $('browse-more');
    this.#error = $('browse-error');
    $('browse-form').addEventListener('submit', (e) => {
      e.preventDefault();
      this.#search();
    }, { signal });
    this.#q.addEventListener('input', () => {
      clearTimeout(this.#timer);
      this.#timer = setTimeout(() => this.#search(), SEARCH_AFTER_MS);
    }, { signal });
    this.#more.addEventListener('click', () => this.#load(false), { signal });
    this.#list.addEventListener('click', (event) => {
      const button = event.target.closest('button[data-room]');
      if (!button) return;
      this.#modal.close();
      hooks.onOpen(button.dataset.room);
    }, { signal });
  }

  open() {
    this.#q.value = '';
    this.#modal.open(this.#q);
    this.#search();
  }

  close() {
    this.#modal.close();
  }

  #search() {
    clearTimeout(this.#timer);
    this.#cursor = null;
    this.#load(true);
  }

  async #load(fresh) {
    const q = this.#q.value.trim().replace(/^#/, '').toLowerCase();
    const asked = ++this.#asked;
    setError(this.#error, '');
    if (q && !/^[a-z0-9_-]*$/.test(q)) {
      this.#list.replaceChildren();
      this.#more.hidden = true;
      this.#status.textContent = `No room name starts with “${q}”.`;
      return;
    }
    this.#list.setAttribute('aria-busy', 'true');
    let page;
    try {
      page = await api.publicRooms(q, fresh ? null : this.#cursor, PAGE);
    } catch (err) {
      if (asked === this.#asked) {
        setError(this.#error, `Could not load public rooms: ${err.message}`);
        this.#list.removeAttribute('aria-busy');
      }
      return;
    }
    if (asked !== this.#asked) return;
    this.#list.removeAttribute('aria-busy');
    const items = (page?.rooms ?? []).map((room) => this.#item(room));
    if (fresh) this.#list.replaceChildren(...items);
    else this.#list.append(...items);
    this.#cursor = page?.next_cursor ?? null;
    this.#more.hidden = !this.#cursor;
    const shown = this.#list.childElementCount;
    const more = this.#cursor ? ' (more below)' : '';
    this.#status.textContent = shown === 0
      ? (q ? `No public room starts with “${q}”.` : 'There are no public rooms yet.')
      : `${shown} public room${shown === 1 ? '' : 's'}${q ? ` starting with “${q}”` : ''}${more}.`;
    if (!fresh) items[0]?.querySelector('button')?.focus();
  }

  #item(room) {
    const at = room.last_message_at ?? room.created_at;
    const mine = this.hooks.isMine(room.name);
    const members = `${room.members} member${room.members === 1 ? '' : 's'}`;
    const activity = at ? `active ${relativeTime(parseDate(at))}` : '';
    return h('li', { class: 'listed', 'data-testid': 'public-room', 'data-room': room.name },
      h('span', { class: 'listed-icon' }, kindIcon('public')),
      h('span', { class: 'listed-main' },
        h('span', { class: 'listed-name' }, room.name),
        h('span', { class: 'listed-meta' }, [members, activity].filter(Boolean).join(' · '))),
      h('button', {
        type: 'button', class: 'btn btn-secondary btn-small', 'data-room': room.name,
        'data-testid': 'public-room-open', 'aria-label': `${mine ? 'Open' : 'Join'} ${room.name}`,
      }, mine ? 'Open' : 'Join'));
  }
}
