// One signed-in session: the socket, the room views, routing, the composer, the room lists,
// the online/typing panels and the dialogs (new room, dm, public rooms, search, members, sessions). Created after login, destroyed on logout or when the session expires, so nothing of
// one user's state can leak into the next login in the same tab.

import * as api from './api.js';
import { BrowseDialog } from './browse.js';
import { Composer, newClientId } from './composer.js';
import * as config from './config.js';
import { announce } from './dialog.js';
import { MembersDialog } from './members-view.js';
import { MessageActions } from './message-actions.js';
import { TOMBSTONE_TEXT, excerpt } from './message-parts.js';
import { NewDmDialog, refusal as dmRefusal } from './new-dm.js';
import { NewRoomDialog } from './new-room.js';
import { Notifier } from './notifier.js';
import { MessagePane } from './pane.js';
import { ReadCursor, attentive } from './read-cursor.js';
import {
  KIND_TEXT, avatarClass, h, kindIcon, onlineItem, roomLabel, typingText,
} from './render.js';
import { RoomList } from './room-list.js';
import { RoomView } from './room-view.js';
import { SearchDialog } from './search-view.js';
import { SessionsDialog } from './sessions-view.js';
import { ChatSocket } from './socket.js';

const ROOMS_REFRESH_MS = 30_000;
/** The latest messages kept in the message announcer (older ones were said already). */
const SAID_KEPT = 5;
/** How long a room this tab asked for is expected back on the user's stream. */
const OWN_DOING_MS = 10_000;
const NARROW = window.matchMedia('(max-width: 700px)');

const STATE_TEXT = { connected: 'Connected', reconnecting: 'Reconnecting…', offline: 'Offline' };

const ERROR_TEXT = {
  timeout: 'Not delivered: the server did not answer.',
  too_large: 'Too long to send.',
  unavailable: 'The server is temporarily unavailable.',
  too_many_rooms: 'You have joined too many rooms on this connection.',
  not_joined: 'Not delivered: not in this room.',
};

/** What an `error` answering an edit, delete or reaction of ours means to the user. */
const COMMAND_ERROR_TEXT = {
  edit: { forbidden: 'You can only edit your own messages.', not_found: 'That message is gone: it was deleted.' },
  delete: { forbidden: 'You are not allowed to delete that message.', not_found: 'That message is gone.' },
  react: { not_found: 'That message is gone: it was deleted.' },
};
const limitText = () => {
  const max = config.maxEmoji();
  return `No more kinds of reaction fit on this message${max ? ` (at most ${max} different emoji)` : ''}: add one of those already there.`;
};
const DONE_TEXT = { edit: 'Message edited.', delete: 'Message deleted.' };

const isRead = (ref) => typeof ref === 'string' && ref.startsWith('read:');

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
  /** Bumped by every `rooms` frame: a full listing asked for before one must not undo it. */
  #roomsEpoch = 0;
  /** Rooms this tab is leaving for good (their `left` is no surprise). */
  #leaving = new Set();
  /** `room:NAME` and `dm:PEER` this tab is creating: their `added` frames are no news. */
  #ownDoing = new Set();
  /** Whether the user is a site admin (owner rights in the rooms they are a member of). */
  admin = false;
  /** Our edits, deletes and reactions awaiting their ack: ref → {room, type, target, op} */
  #commands = new Map();
  /** Rooms whose counts are being read again: room → whether to read them once more after. */
  #recounting = new Map();
  /** A search result to show once its room is open and joined: {room, seq}. */
  #pendingJump = null;

  /**
   * @param {string} me
   * @param {object} dom elements by role (see app.js)
   * @param {{onExpired(): void, onSignedOut(message: string): void, closePanels(): void}} hooks
   */
  constructor(me, dom, { onExpired, onSignedOut, closePanels }) {
    this.me = me;
    this.#dom = dom;
    this.onExpired = onExpired;
    this.onSignedOut = onSignedOut;
    this.closePanels = closePanels;
    this.socket = new ChatSocket(me);
    const { signal } = this.#abort;
    this.rooms = new RoomList(
      { rooms: dom.roomList, dms: dom.dmList }, { rooms: dom.roomEmpty, dms: dom.dmEmpty },
      (room) => this.navigate(room), () => this.#renderTitle(), signal);
    this.cursor = new ReadCursor(this.socket, this.rooms);
    this.notifier = new Notifier(dom.notifyToggle, me, (room) => this.navigate(room), signal);
    const opened = (room) => this.#opened(room);
    this.newRoom = new NewRoomDialog({
      onCreating: (name) => this.#expect(`room:${name}`), onCreated: opened,
    }, signal);
    this.newDm = new NewDmDialog(me, {
      onOpening: (peer) => this.#expect(`dm:${peer}`), onOpened: opened,
    }, signal);
    this.browse = new BrowseDialog({
      onOpen: (room) => this.navigate(room),
      isMine: (room) => this.rooms.has(room),
    }, signal);
    this.search = new SearchDialog({
      onOpen: (room, seq) => this.#openAt(room, seq),
      info: (room) => this.rooms.get(room),
    }, signal);
    this.members = new MembersDialog({
      me,
      admin: () => this.admin,
      label: (room, info) => roomLabel(room, info ?? this.rooms.get(room)),
      onLeft: (room) => this.#left(room),
    }, signal);
    this.sessions = new SessionsDialog({ onSignedOut: (message) => this.onSignedOut(message) }, signal);
    this.actions = new MessageActions(dom, {
      me,
      canDelete: (view, msg) => this.#canDelete(view, msg),
      edit: (view, seq, body) => this.#command(view, { type: 'edit', target: seq, body }),
      remove: (view, seq) => this.#command(view, { type: 'delete', target: seq }),
      react: (view, seq, emoji, op) => this.#command(view, { type: 'react', target: seq, emoji, op }),
      reply: (view, seq) => this.#startReply(view, seq),
      editDone: () => this.composer.focus(),
    }, signal);
    this.pane = new MessagePane(dom.messages, dom.newPill, {
      onNearTop: (view) => view.loadOlder(),
      onNearBottom: (view) => view.loadNewer(),
      onAtBottom: (view) => this.#markRead(view),
      onLatest: (view) => view.toLatest(),
    }, signal);
  }

  start(rooms) {
    const d = this.#dom;
    const on = (target, type, fn) => target.addEventListener(type, fn, { signal: this.#abort.signal });

    d.currentUser.textContent = this.me;
    d.meAvatar.className = avatarClass(this.me);
    d.meAvatar.textContent = this.me.slice(0, 1).toUpperCase();
    this.rooms.merge(rooms);
    api.me().then((answer) => { this.admin = answer?.admin === true; }, () => {});

    this.#wireSocket(on);
    on(d.newRoomOpen, 'click', () => this.newRoom.open());
    on(d.newDmOpen, 'click', () => this.newDm.open());
    on(d.browseOpen, 'click', () => this.browse.open());
    on(d.searchOpen, 'click', () => this.search.open());
    on(document, 'keydown', (e) => {
      if ((e.ctrlKey || e.metaKey) && !e.altKey && !e.shiftKey && e.key.toLowerCase() === 'k'
          && !document.querySelector('dialog[open]')) {
        e.preventDefault();
        d.searchOpen.focus(); // where the focus goes back when the view closes
        this.search.open();
      }
    });
    on(d.sessionsOpen, 'click', () => this.sessions.open());
    // A username anywhere in the page (render.js, userName) opens the dm with that person.
    on(document, 'click', (e) => {
      const button = e.target.closest?.('button[data-dm]');
      if (button) this.#openDm(button.dataset.dm);
    });
    on(d.membersOpen, 'click', () => {
      if (this.current) this.members.open(this.current.name, this.rooms.get(this.current.name));
    });
    on(window, 'hashchange', () => this.#route());
    on(d.joinForm, 'submit', (e) => { e.preventDefault(); this.#joinFromInput(); });
    this.composer = new Composer(d, {
      onSend: (body) => this.#send(body),
      onTyping: () => { if (this.current) this.socket.typing(this.current.name); },
      onTooLong: (max) => this.#toast(`Messages can be at most ${max} characters.`),
      onEditLast: () => {
        const seq = this.current?.lastOwnEditable();
        return seq != null && this.actions.startEdit(this.current, seq);
      },
      onEscape: () => {
        if (this.current?.replyTo == null) return false;
        this.#cancelReply();
        return true;
      },
    }, this.#abort.signal);
    on(d.messages, 'click', (e) => this.#messageAction(e));
    on(d.replyCancel, 'click', () => {
      this.#cancelReply();
      this.composer.focus();
    });
    on(d.reconnect, 'click', () => this.socket.reconnectNow());
    // Coming back to the page: what came meanwhile is marked, then read if in view.
    const attention = () => {
      const back = attentive();
      if (back && this.current) this.#markNew(this.current, { keep: true });
      this.rooms.setAttentive(back);
      if (back && this.current && this.pane.atBottom()) this.#markRead(this.current);
    };
    on(document, 'visibilitychange', attention);
    on(window, 'focus', attention);
    on(window, 'blur', attention);
    this.rooms.setAttentive(attentive());

    // Activity of rooms this tab has not joined only reaches us through the REST list.
    this.#timers.push(setInterval(() => this.#refreshRooms(), ROOMS_REFRESH_MS));

    this.#renderState('reconnecting');
    this.socket.start();
    this.#route();
  }

  destroy() {
    this.#abort.abort();
    this.cursor.dispose();
    this.#timers.forEach(clearInterval);
    clearTimeout(this.#toastTimer);
    this.socket.stop();
    this.actions.close();
    for (const dialog of [this.newRoom, this.newDm, this.browse, this.members, this.sessions]) {
      dialog.close();
    }
    this.search.forget(); // its results are this user's
    for (const view of this.views.values()) view.dispose();
    this.pane.show(null);
    const d = this.#dom;
    d.currentUser.textContent = '';
    d.roomList.replaceChildren();
    d.dmList.replaceChildren();
    d.roomNotice.hidden = true;
    d.online.replaceChildren();
    d.messageAnnouncer.replaceChildren();
    d.typing.textContent = '';
    d.replyBar.hidden = true;
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
      // The first join's replay is recent history, not news: no pill, nothing said.
      const live = v.joinedOnce;
      if (v.addMessage(m, { live }) && live && v === this.current && m.author !== this.me) {
        this.#say(m);
      }
      this.rooms.activity(m.room, m.seq, m.created_at);
      this.#ownMessage(m.room, m.seq, m.author);
    });
    for (const type of ['edit', 'delete', 'reaction']) {
      on(s, type, ({ detail: f }) => view(f.room)?.applyChange(f));
    }
    on(s, 'member', ({ detail: f }) => {
      const v = view(f.room);
      if (!v) return;
      v.addEvent(f);
      // Whoever left or was removed is cut off from the room: not online in it any more.
      if ((f.event === 'left' || f.event === 'removed') && v.online.delete(f.user)) {
        v.clearTyping(f.user);
        if (v === this.current) this.#renderOnline();
      }
      this.rooms.activity(f.room, f.seq, null);
      if (this.members.room === f.room) this.members.refresh();
    });
    on(s, 'rooms', ({ detail: f }) => this.#onRoomsFrame(f));
    // The user's stream: their cursor moved (in some tab), a room has new messages, a mention.
    on(s, 'read', ({ detail: f }) => {
      if (this.rooms.read(f.room, f.seq)) this.#recount(f.room);
    });
    on(s, 'activity', ({ detail: f }) => {
      if (this.rooms.heard(f)) this.#recount(f.room);
    });
    on(s, 'notification', ({ detail: f }) => {
      if (typeof f.room !== 'string') return;
      // A new dm's first message may come before its `rooms` frame is answered: only the
      // server's word is needed (`dm-` names are dms'), which names no room for a dm.
      this.notifier.notify(f, f.room.startsWith('dm-') ? null : `#${f.room}`);
      this.#recount(f.room);
    });
    on(s, 'left', ({ detail: f }) => {
      if (f.reason !== 'removed' || typeof f.room !== 'string') return;
      if (this.#leaving.delete(f.room)) return; // this tab's own leave: already handled
      this.#closeRoom(f.room, `You are no longer a member of ${this.#label(f.room)}.`);
    });
    on(s, 'joined', ({ detail: f }) => {
      const v = view(f.room);
      if (!v) return;
      const first = !v.joinedOnce;
      v.onJoined(f);
      if (first && v.newLine.shown) this.#announceNew(v);
      this.rooms.joined(f.room, f);
      this.rooms.activity(f.room, f.last_seq, null);
      if (v === this.current) {
        this.#renderHeading();
        this.#renderOnline();
        if (this.pane.atBottom()) this.#markRead(v);
        this.#takeJump();
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
      if (isRead(f.ref)) return; // the `read` frame that follows tells every tab
      const command = this.#commands.get(f.ref);
      if (command) {
        this.#commands.delete(f.ref);
        if (DONE_TEXT[command.type]) announce(DONE_TEXT[command.type]);
        else announce(command.op === 'add' ? `Reacted with ${command.emoji}.` : `Reaction ${command.emoji} removed.`);
        return;
      }
      view(f.room)?.confirm(f);
      this.rooms.activity(f.room, f.seq, f.created_at);
      this.#ownMessage(f.room, f.seq, this.me);
    });
    on(s, 'sendfailed', ({ detail: f }) => view(f.room)?.fail(f.client_id, describeError(f.code, f.detail)));
    on(s, 'error', ({ detail: f }) => {
      const command = this.#commands.get(f.ref);
      if (command) {
        this.#commands.delete(f.ref);
        view(command.room)?.refresh(command.target); // an edit shown at once goes back
        const text = f.code === 'limit_reached' ? limitText()
          : COMMAND_ERROR_TEXT[command.type]?.[f.code] ?? describeError(f.code, f.detail);
        this.#toast(text);
        return;
      }
      if (isRead(f.ref)) {
        this.cursor.forget(); // sent again at the next sight of the newest messages
        return;
      }
      if (f.code === 'rate_limited') return; // a typing frame too many: harmless
      const joinOf = typeof f.ref === 'string' && f.ref.startsWith('join:') ? f.ref.slice(5) : null;
      if (f.code === 'forbidden' && joinOf) {
        // A private room or dm we are not (or no longer) a member of, or a reserved dm- name.
        this.#closeRoom(joinOf, `You cannot open #${joinOf}: it is private, and you are not a member.`);
        return;
      }
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

  // ------------------------------------------------------------------------- the user's rooms

  /** The whole list again (after a reconnect: the user's stream is live only). */
  async #refreshRooms() {
    const epoch = this.#roomsEpoch;
    let list;
    try {
      list = await api.listAllRooms();
    } catch {
      return; // the next reconnect or the periodic refresh tries again
    }
    if (this.#abort.signal.aborted) return;
    // A `rooms` frame handled meanwhile may be newer than this listing: then only add.
    if (epoch === this.#roomsEpoch) this.rooms.replace(list, new Set(this.views.keys()));
    else this.rooms.merge(list);
  }

  /** `rooms` (the user's own stream): a room was added, removed or changed; read it again. */
  async #onRoomsFrame({ room, event }) {
    if (typeof room !== 'string') return;
    this.#roomsEpoch += 1;
    let info = null;
    try {
      info = await api.roomInfo(room);
    } catch (err) {
      if (err.status !== 403 && err.status !== 404) return; // unreachable: the refresh will tell
    }
    if (this.#abort.signal.aborted) return;
    if (!info || info.role == null) {
      // Not (or no longer) ours. A view still open is closed by its `left` or its join's refusal.
      this.rooms.remove(room);
      return;
    }
    const known = this.rooms.has(room);
    this.rooms.merge([info]);
    const own = this.#ownDoing.has(info.kind === 'dm' ? `dm:${info.peer}` : `room:${room}`);
    if (event === 'added' && !known && !own && !this.views.has(room)) {
      announce(info.kind === 'dm'
        ? `${info.peer ?? 'Someone'} started a conversation with you.`
        : `You were added to ${info.kind === 'private' ? 'private room' : 'room'} ${room}.`);
    }
    const v = this.views.get(room);
    if (v) {
      v.kind = info.kind;
      v.role = info.role;
      if (v === this.current) this.#renderHeading();
    }
    if (this.members.room === room) this.members.refresh();
  }

  /** Read a room's counts again (GET /api/rooms/{room}), one request at a time per room: a
   * call while one is on its way asks for one more after it. */
  async #recount(room) {
    if (this.#recounting.has(room)) {
      this.#recounting.set(room, true);
      return;
    }
    do {
      this.#recounting.set(room, false);
      let info = null;
      try {
        info = await api.roomInfo(room);
      } catch {
        // lost (the `rooms` frame says so) or unreachable (the periodic refresh tries again)
      }
      if (this.#abort.signal.aborted) return;
      if (info?.role != null && this.rooms.has(room)) this.rooms.merge([info]);
    } while (this.#recounting.get(room));
    this.#recounting.delete(room);
  }

  /** Posting moves the author's cursor to their message (PROTOCOL.md, Read cursor), without
   * a `read` frame: the page moves it too, so it sends no `read` that would not move it. */
  #ownMessage(room, seq, author) {
    if (author === this.me && Number.isInteger(seq) && this.rooms.read(room, seq)) this.#recount(room);
  }

  /** This tab's own creations come back as `rooms` frames too: no news to announce. */
  #expect(key) {
    this.#ownDoing.add(key);
    setTimeout(() => this.#ownDoing.delete(key), OWN_DOING_MS);
  }

  /** A room this tab created or a dm it opened: into the sidebar, and on screen. */
  #opened(room) {
    this.rooms.merge([room]);
    this.navigate(room.name);
  }

  /** Open the dm with `peer`: the one in the sidebar, else POST /api/dms (which answers the
   * existing dm too, or creates it). */
  async #openDm(peer) {
    if (!peer || peer === this.me) return;
    this.members.close();
    const known = this.rooms.dmWith(peer);
    if (known) {
      this.navigate(known);
      return;
    }
    if (this.#ownDoing.has(`dm:${peer}`)) return; // on its way already
    this.#expect(`dm:${peer}`);
    try {
      const room = await api.openDm(peer);
      if (!this.#abort.signal.aborted) this.#opened(room);
    } catch (err) {
      this.#ownDoing.delete(`dm:${peer}`);
      if (!this.#abort.signal.aborted) this.#toast(dmRefusal(err, peer));
    }
  }

  /** This tab left `room` for good (DELETE .../members/me answered). */
  #left(room) {
    this.#leaving.add(room);
    const label = this.#label(room);
    this.#closeRoom(room, `You left ${label}.`);
  }

  /** The user may no longer read `room`: forget it and, if it is on screen, say why. */
  #closeRoom(room, notice) {
    const d = this.#dom;
    const v = this.views.get(room);
    const wasCurrent = v != null && v === this.current;
    this.socket.forget(room);
    if (this.members.room === room) this.members.close();
    if (wasCurrent) {
      history.replaceState(null, '', location.pathname + location.search);
      this.#open(null);
    }
    if (v) {
      v.dispose();
      this.views.delete(room);
    }
    this.rooms.remove(room);
    if (wasCurrent || !v) {
      d.roomNotice.textContent = notice;
      d.roomNotice.hidden = false;
    } else {
      this.#toast(notice);
    }
    announce(notice);
  }

  /** How the page names a room in sentences: "#general", or a dm's other person. */
  #label(room) {
    const info = this.rooms.get(room);
    return info?.kind === 'dm' ? `the conversation with ${roomLabel(room, info)}` : `#${room}`;
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
    const previous = this.current;
    if (this.current) this.current.draft = this.composer.value;
    this.actions.closePopup(false);
    let view = name ? this.views.get(name) : null;
    if (name && !view) {
      view = new RoomView(name, {
        me: this.me,
        pane: this.pane,
        onTypingChange: (v) => { if (v === this.current) this.#renderTyping(); },
        onQuoteChange: (v) => { if (v === this.current) this.#renderReply(); },
      });
      this.views.set(name, view);
      this.#leaving.delete(name); // back in a room left before: its next `left` is news
      this.rooms.ensure(name);
      // Every room opened in this tab stays joined: switching back is instant, and the
      // socket keeps its resume point fresh.
      this.socket.join(name);
    }
    this.current = view;
    this.pane.show(view);
    this.rooms.setActive(name);
    d.chat.classList.toggle('no-room', !view);
    if (view) d.roomNotice.hidden = true;
    // Back in a room opened before: the line moves to the cursor as it is now.
    if (view?.joinedOnce && view !== previous) this.#markNew(view, { keep: false });
    this.composer.setRoom(name, view?.draft ?? '');
    this.#renderReply();
    this.#renderHeading();
    this.#renderOnline();
    this.#renderTyping();
    this.#renderTitle();
    if (view) {
      if (view.joinedOnce && this.pane.atBottom()) this.#markRead(view);
      this.pane.maybeLoadOlder(view);
      this.pane.maybeLoadNewer(view);
      this.closePanels();
      if (!NARROW.matches) this.composer.focus(); // on phones, don't pop the keyboard up
    }
    if (this.#pendingJump?.room !== name) this.#pendingJump = null;
    this.#takeJump();
  }

  /** A search result: open its room at message `seq` (once the room is joined). */
  #openAt(room, seq) {
    this.#pendingJump = { room, seq };
    this.navigate(room);
  }

  #takeJump() {
    const view = this.current;
    if (!view || !view.joinedOnce || this.#pendingJump?.room !== view.name) return;
    const { seq } = this.#pendingJump;
    this.#pendingJump = null;
    this.#jump(view, seq, { hold: true });
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

  /** The newest messages of `view` are in view: move the cursor (when the page is seen). */
  #markRead(view) {
    // Before its `joined`, a room's cursor is not known yet: its replay is no reason to move it.
    if (view === this.current && view.joinedOnce) this.cursor.seen(view);
  }

  /** Draw the "New messages" line at the cursor in force, when there is news after it; with
   * nothing new, `keep` leaves an earlier line where it is. */
  #markNew(view, { keep }) {
    const info = this.rooms.get(view.name);
    if (Number.isInteger(info?.last_read_seq) && info.unread > 0) {
      const moved = view.newLine.from !== info.last_read_seq;
      view.newLine.set(info.last_read_seq);
      if (moved && view.newLine.shown) this.#announceNew(view);
    } else if (!keep) {
      view.newLine.clear();
    }
  }

  #announceNew(view) {
    const unread = this.rooms.get(view.name)?.unread;
    announce(unread > 0
      ? `${unread} new ${unread === 1 ? 'message' : 'messages'} in ${this.#label(view.name)}, after the line “New messages”.`
      : `New messages in ${this.#label(view.name)}, after the line “New messages”.`);
  }

  // ----------------------------------------------------------------------------------- sends

  #send(body) {
    const view = this.current;
    if (!view) return;
    const clientId = newClientId();
    const replyTo = view.replyTo;
    view.toLatest(); // a reader far back sees their message arrive among the newest
    view.addPending(body, clientId, replyTo); // shown at once, dimmed, until the ack or the echo
    view.newLine.clear(); // answering: caught up
    view.draft = '';
    this.socket.send(view.name, body, clientId, replyTo);
    if (replyTo != null) this.#cancelReply();
  }

  // ---------------------------------------------------------------- edits, deletes, reactions

  /** An edit, delete or react command for `view`'s room; false when it could not go out. */
  #command(view, frame) {
    const ref = this.socket.command({ ...frame, room: view.name });
    if (ref == null) {
      this.#toast('Not connected: try again in a moment.');
      return false;
    }
    this.#commands.set(ref, { room: view.name, ...frame });
    return true;
  }

  /** PROTOCOL.md's roles: your own; an owner (or an admin member) any; a moderator any but an
   * owner's. The page cannot tell an owner's message from a member's: the server judges that. */
  #canDelete(view, msg) {
    if (msg.author === this.me) return true;
    const role = view.role ?? this.rooms.get(view.name)?.role ?? null;
    if (view.kind === 'dm' || this.rooms.get(view.name)?.kind === 'dm') return false;
    return this.admin ? role != null : role === 'owner' || role === 'moderator';
  }

  #startReply(view, seq) {
    if (view !== this.current || !view.message(seq)) return;
    view.replyTo = seq;
    this.#renderReply();
    this.composer.focus();
    announce(`Replying to ${view.message(seq).author}. Escape cancels the reply.`);
  }

  #cancelReply() {
    if (!this.current) return;
    this.current.replyTo = null;
    this.#renderReply();
  }

  /** The quote above the composer of the message being answered. */
  #renderReply() {
    const d = this.#dom;
    const view = this.current;
    const original = view?.replyTo != null ? view.message(view.replyTo) : null;
    d.replyBar.hidden = !original;
    d.replyText.replaceChildren(...(original ? [
      'Replying to ', h('strong', {}, original.author), ': ',
      original.deleted ? TOMBSTONE_TEXT : excerpt(original.body),
    ] : []));
  }

  #messageAction(event) {
    const button = event.target.closest('button[data-action]');
    const view = this.current;
    if (!button || !view) return;
    const row = button.closest('[data-testid="message"]');
    const clientId = row?.dataset.clientId;
    const seq = Number(row?.dataset.seq);
    switch (button.dataset.action) {
      case 'retry': {
        const body = view.retry(clientId);
        // The same client_id: idempotent.
        if (body != null) this.socket.send(view.name, body, clientId, view.pendingReply(clientId));
        break;
      }
      case 'discard':
        view.discard(clientId);
        this.composer.focus();
        break;
      case 'load-older':
        view.retryHistory();
        break;
      case 'load-newer':
        view.loadNewer();
        break;
      case 'load-gap':
        view.loadGap();
        break;
      case 'jump':
        this.#jump(view, Number(button.dataset.target));
        break;
      case 'reply':
        this.#startReply(view, seq);
        break;
      case 'menu':
        this.actions.openMenu(button, view, seq);
        break;
      case 'react-open':
        this.actions.openPicker(button, view, seq);
        break;
      case 'react-toggle': {
        const emoji = button.dataset.emoji;
        const mine = view.message(seq)?.reactions.find((r) => r.emoji === emoji)?.me === true;
        this.#command(view, { type: 'react', target: seq, emoji, op: mine ? 'remove' : 'add' });
        break;
      }
      default:
        break;
    }
  }

  async #jump(view, seq, { hold = false } = {}) {
    if (!Number.isInteger(seq)) return;
    const shown = await view.jumpTo(seq, { hold });
    if (view !== this.current) return;
    if (shown) announce(`Showing the message by ${view.message(seq)?.author ?? 'its author'}.`);
    else this.#toast('That message is no longer available.');
  }

  // ----------------------------------------------------------------------------------- views

  #renderState(state) {
    const d = this.#dom;
    if (state === 'connected') {
      this.#everConnected = true;
      this.cursor.forget(); // a `read` written to the lost connection may never have arrived
    }
    d.conn.dataset.state = state;
    if (state === 'connected') this.#refreshRooms();
    d.conn.textContent = state === 'reconnecting' && !this.#everConnected ? 'Connecting…' : STATE_TEXT[state];
    d.chat.dataset.conn = state; // CSS words pending rows "waiting for connection" from this
    d.reconnect.hidden = state === 'connected';
  }

  /** The room's name (a dm's other person) and kind in the header and the composer. */
  /** Say a new message politely (the message list itself is silent, index.html). */
  #say(msg) {
    const region = this.#dom.messageAnnouncer;
    region.append(h('p', {}, `${msg.author}: ${msg.deleted ? TOMBSTONE_TEXT : excerpt(msg.body)}`));
    while (region.childElementCount > SAID_KEPT) region.firstElementChild.remove();
  }

  #renderHeading() {
    const d = this.#dom;
    const name = this.current?.name ?? null;
    const info = name ? this.rooms.get(name) : null;
    const kind = this.current?.kind ?? info?.kind ?? 'public';
    const label = name ? roomLabel(name, info) : '';
    d.roomTitle.textContent = label;
    d.roomKind.dataset.kind = kind;
    d.roomKind.replaceChildren(...(name
      ? [kindIcon(kind), h('span', { class: 'visually-hidden' }, `${KIND_TEXT[kind] ?? 'Room'}: `)]
      : []));
    d.membersOpen.hidden = !name;
    d.membersOpen.setAttribute('aria-label', kind === 'dm'
      ? `About the conversation with ${label}` : `Members and settings of #${label}`);
    if (name) {
      this.composer.setLabel(kind === 'dm' ? `Message ${label}` : `Message #${label}`);
      this.current.setLabel(kind === 'dm' ? `your conversation with ${label}` : `#${label}`);
    }
  }

  #renderOnline() {
    const users = [...(this.current?.online ?? [])]
      .sort((a, b) => (b === this.me) - (a === this.me) || a.localeCompare(b));
    this.#dom.online.replaceChildren(...users.map((u) => onlineItem(u, this.me)));
    this.#dom.onlineCount.textContent = String(users.length);
  }

  #renderTyping() {
    const users = [...(this.current?.typing.keys() ?? [])].filter((u) => u !== this.me);
    this.#dom.typing.textContent = typingText(users);
  }

  #renderTitle() {
    queueMicrotask(() => {
      const unread = this.rooms.totalUnread();
      const name = this.current?.name;
      const info = name ? this.rooms.get(name) : null;
      const base = name ? `${info?.kind === 'dm' ? '@' : '#'}${roomLabel(name, info)} · Chat` : 'Chat';
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
