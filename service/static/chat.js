// One signed-in session: the socket, the room views, routing, the composer, the room list and
// the online/typing panels. Created after login, destroyed on logout or when the session expires, so nothing of
// one user's state can leak into the next login in the same tab.

import * as api from './api.js';
import { Composer, newClientId } from './composer.js';
import * as config from './config.js';
import { MessagePane } from './pane.js';
import { avatarClass, onlineItem, typingText } from './render.js';
import { RoomList } from './room-list.js';
import { RoomView } from './room-view.js';
import { ChatSocket } from './socket.js';

const ROOMS_REFRESH_MS = 30_000;
const NARROW = window.matchMedia('(max-width: 700px)');

const STATE_TEXT = { connected: 'Connected', reconnecting: 'Reconnecting…', offline: 'Offline' };

const ERROR_TEXT = {
  timeout: 'Not delivered: the server did not answer.',
  too_large: 'Too long to send.',
  unavailable: 'The server is temporarily unavailable.',
  too_many_rooms: 'You have joined too many rooms on this connection.',
  not_joined: 'Not delivered: not in this room.',
};

export const describeError = (code, detail) =>
  ERROR_TEXT[code] ?? (typeof detail === 'string' && detail ? detail : 'Something went wrong.');

export class ChatSession {
  /** @type {Map<string, RoomView>} */
  views = new Map();
  /** @type {RoomView|null} */
  current = null;
  #dom;
  #abort = new AbortController();
  #timers = [];
  #everConnected = false;
  #toastTimer = 0;

  /**
   * @param {string} me
   * @param {object} dom elements by role (see app.js)
   * @param {{onExpired(): void, closePanels(): void}} hooks
   */
  constructor(me, dom, { onExpired, closePanels }) {
    this.me = me;
    this.#dom = dom;
    this.onExpired = onExpired;
    this.closePanels = closePanels;
    this.socket = new ChatSocket(me);
    const { signal } = this.#abort;
    this.rooms = new RoomList(dom.roomList, dom.roomEmpty, me, (room) => this.navigate(room), signal);
    this.pane = new MessagePane(dom.messages, dom.newPill, {
      onNearTop: (view) => view.loadOlder(),
      onAtBottom: (view) => this.#markRead(view),
    }, signal);
  }

  start(rooms) {
    const d = this.#dom;
    const on = (target, type, fn) => target.addEventListener(type, fn, { signal: this.#abort.signal });

    d.currentUser.textContent = this.me;
    d.meAvatar.className = avatarClass(this.me);
    d.meAvatar.textContent = this.me.slice(0, 1).toUpperCase();
    this.rooms.merge(rooms);

    this.#wireSocket(on);
    on(window, 'hashchange', () => this.#route());
    on(d.joinForm, 'submit', (e) => { e.preventDefault(); this.#joinFromInput(); });
    this.composer = new Composer(d, {
      onSend: (body) => this.#send(body),
      onTyping: () => { if (this.current) this.socket.typing(this.current.name); },
      onTooLong: (max) => this.#toast(`Messages can be at most ${max} characters.`),
    }, this.#abort.signal);
    on(d.messages, 'click', (e) => this.#messageAction(e));
    on(d.reconnect, 'click', () => this.socket.reconnectNow());
    on(document, 'visibilitychange', () => {
      if (!document.hidden && this.current && this.pane.atBottom()) this.#markRead(this.current);
    });

    // Activity of rooms this tab has not joined only reaches us through the REST list.
    this.#timers.push(setInterval(() => {
      api.listRooms().then((list) => this.rooms.merge(list), () => {});
    }, ROOMS_REFRESH_MS));

    this.#renderState('reconnecting');
    this.socket.start();
    this.#route();
  }

  destroy() {
    this.#abort.abort();
    this.#timers.forEach(clearInterval);
    clearTimeout(this.#toastTimer);
    this.socket.stop();
    for (const view of this.views.values()) view.dispose();
    this.pane.show(null);
    const d = this.#dom;
    d.roomList.replaceChildren();
    d.online.replaceChildren();
    d.typing.textContent = '';
    d.toast.hidden = true;
    this.closePanels();
    document.title = 'Chat';
  }

  navigate(room) {
    const hash = `#/room/${encodeURIComponent(room)}`;
    if (location.hash === hash) this.#route();
    else location.hash = hash; // → hashchange → #route, so links, back/forward and reload agree
  }

  // ---------------------------------------------------------------------------------- socket

  #wireSocket(on) {
    const s = this.socket;
    const view = (room) => this.views.get(room);
    on(s, 'state', (e) => this.#renderState(e.detail.state));
    on(s, 'message', ({ detail: m }) => {
      const v = view(m.room);
      if (!v) return;
      v.clearTyping(m.author);
      // The first join's replay is recent history, not news: no pill, no unread bump.
      v.addMessage(m, { live: v.joinedOnce });
      this.rooms.activity(m.room, m.seq, m.created_at);
      // Your own words (maybe from another tab) never count as unread.
      if (m.author === this.me && (this.rooms.readSeq(m.room) ?? -1) >= m.seq - 1) {
        this.rooms.markRead(m.room, m.seq);
      }
      this.#renderTitle();
    });
    on(s, 'joined', ({ detail: f }) => {
      const v = view(f.room);
      if (!v) return;
      v.onJoined(f);
      this.rooms.activity(f.room, f.last_seq, null);
      if (v === this.current) {
        this.#renderOnline();
        if (this.pane.atBottom()) this.#markRead(v);
      }
    });
    on(s, 'presence', ({ detail: f }) => {
      const v = view(f.room);
      if (!v) return;
      if (f.event === 'join') v.online.add(f.user);
      else if (f.event === 'leave') {
        v.online.delete(f.user);
        v.clearTyping(f.user);
      }
      if (v === this.current) this.#renderOnline();
    });
    on(s, 'typing', ({ detail: f }) => {
      if (f.user !== this.me) view(f.room)?.setTyping(f.user);
    });
    on(s, 'ack', ({ detail: f }) => {
      view(f.room)?.confirm(f);
      this.rooms.activity(f.room, f.seq, f.created_at);
    });
    on(s, 'sendfailed', ({ detail: f }) => view(f.room)?.fail(f.client_id, describeError(f.code, f.detail)));
    on(s, 'error', ({ detail: f }) => {
      if (f.code === 'rate_limited') return; // a typing frame too many: harmless
      const where = f.room ? ` (#${f.room})` : '';
      this.#toast(`${describeError(f.code, f.detail)}${where}`);
    });
    on(s, 'unauthorized', () => this.onExpired());
    on(s, 'handshakefailed', () => {
      // The browser hides why a handshake failed. Ask REST: a 401 there means the session
      // expired (api.onUnauthorized → onExpired); anything else, the socket keeps retrying.
      api.listRooms().then((list) => this.rooms.merge(list), () => {});
    });
  }

  // ----------------------------------------------------------------------------------- rooms

  #route() {
    const match = /^#\/room\/(.+)$/.exec(location.hash);
    if (!match) {
      this.#open(null);
      return;
    }
    let name = '';
    try {
      name = decodeURIComponent(match[1]).trim().toLowerCase();
    } catch {
      // malformed escape: falls through to the invalid-name path
    }
    if (!name || config.refusesRoomName(name)) {
      this.#toast(`"${name || match[1]}" is not a valid room name.`);
      history.replaceState(null, '', location.pathname + location.search);
      this.#open(null);
      return;
    }
    if (match[1] !== encodeURIComponent(name)) history.replaceState(null, '', `#/room/${name}`);
    this.#open(name);
  }

  #open(name) {
    const d = this.#dom;
    if (this.current) this.current.draft = this.composer.value;
    let view = name ? this.views.get(name) : null;
    if (name && !view) {
      view = new RoomView(name, {
        me: this.me,
        pane: this.pane,
        onTypingChange: (v) => { if (v === this.current) this.#renderTyping(); },
      });
      this.views.set(name, view);
      this.rooms.ensure(name);
      // Every room opened in this tab stays joined: switching back is instant, and the
      // socket keeps its resume point fresh.
      this.socket.join(name);
    }
    this.current = view;
    this.pane.show(view);
    this.rooms.setActive(name);
    d.chat.classList.toggle('no-room', !view);
    d.roomTitle.textContent = name ?? '';
    this.composer.setRoom(name, view?.draft ?? '');
    this.#renderOnline();
    this.#renderTyping();
    this.#renderTitle();
    if (view) {
      if (view.joinedOnce && this.pane.atBottom()) this.#markRead(view);
      this.pane.maybeLoadOlder(view);
      this.closePanels();
      if (!NARROW.matches) this.composer.focus(); // on phones, don't pop the keyboard up
    }
  }

  #joinFromInput() {
    const d = this.#dom;
    const name = d.roomInput.value.trim().replace(/^#/, '').toLowerCase();
    if (!name || config.refusesRoomName(name)) {
      d.roomError.textContent = name
        ? `Not a valid room name: names must match ${config.roomPattern()}`
        : 'Type a room name.';
      d.roomError.hidden = false;
      d.roomInput.setAttribute('aria-invalid', 'true');
      d.roomInput.focus();
      return;
    }
    d.roomError.hidden = true;
    d.roomInput.removeAttribute('aria-invalid');
    d.roomInput.value = '';
    this.navigate(name);
  }

  #markRead(view) {
    if (document.hidden || view !== this.current) return;
    this.rooms.markRead(view.name, view.maxSeq);
    this.#renderTitle();
  }

  // ----------------------------------------------------------------------------------- sends

  #send(body) {
    const view = this.current;
    if (!view) return;
    const clientId = newClientId();
    view.addPending(body, clientId); // shown at once, dimmed, until the ack or the echo
    view.draft = '';
    this.socket.send(view.name, body, clientId);
  }

  #messageAction(event) {
    const button = event.target.closest('button[data-action]');
    const view = this.current;
    if (!button || !view) return;
    const clientId = button.closest('[data-testid="message"]')?.dataset.clientId;
    switch (button.dataset.action) {
      case 'retry': {
        const body = view.retry(clientId);
        if (body != null) this.socket.send(view.name, body, clientId); // same client_id: idempotent
        break;
      }
      case 'discard':
        view.discard(clientId);
        this.composer.focus();
        break;
      case 'load-older':
        view.retryHistory();
        break;
      default:
        break;
    }
  }

  // ----------------------------------------------------------------------------------- views

  #renderState(state) {
    const d = this.#dom;
    if (state === 'connected') this.#everConnected = true;
    d.conn.dataset.state = state;
    d.conn.textContent = state === 'reconnecting' && !this.#everConnected ? 'Connecting…' : STATE_TEXT[state];
    d.chat.dataset.conn = state; // CSS words pending rows "waiting for connection" from this
    d.reconnect.hidden = state === 'connected';
    if (state === 'connected') api.listRooms().then((list) => this.rooms.merge(list), () => {});
  }

  #renderOnline() {
    const users = [...(this.current?.online ?? [])]
      .sort((a, b) => (b === this.me) - (a === this.me) || a.localeCompare(b));
    this.#dom.online.replaceChildren(...users.map((u) => onlineItem(u, u === this.me)));
    this.#dom.onlineCount.textContent = String(users.length);
  }

  #renderTyping() {
    const users = [...(this.current?.typing.keys() ?? [])].filter((u) => u !== this.me);
    this.#dom.typing.textContent = typingText(users);
  }

  #renderTitle() {
    queueMicrotask(() => {
      const unread = this.rooms.totalUnread();
      const base = this.current ? `#${this.current.name} · Chat` : 'Chat';
      document.title = unread ? `(${unread}) ${base}` : base;
    });
  }

  #toast(text) {
    const toast = this.#dom.toast;
    toast.textContent = text;
    toast.hidden = false;
    clearTimeout(this.#toastTimer);
    this.#toastTimer = setTimeout(() => { toast.hidden = true; }, 6_000);
  }
}
