// Everything the page holds for one room: its messages (by seq), the sender's pending
// messages (by client_id), who is online and typing, and the DOM that shows them.
//
// Invariants:
//  - a seq is shown at most once: `messages` is a Map seq → {msg, row}, checked first;
//  - confirmed rows, and the system lines of `member` events (private rooms), are in ascending
//    seq order; pending/failed rows follow them at the end;
//  - the loaded messages form one contiguous run of seqs, so "the lowest seq shown" is always
//    the right `before` for the next page of history.

import { fetchHistory } from './api.js';
import {
  confirmRow, h, historyTop, messageRow, regroup, setRowState, systemRow,
} from './render.js';

const PAGE_SIZE = 50;
const TYPING_SHOWN_MS = 4_000;

export class RoomView {
  /** confirmed messages and member events: seq → {msg, row} */
  messages = new Map();
  /** our unacknowledged sends: client_id → {row, body} */
  pending = new Map();
  minSeq = Infinity;
  maxSeq = 0;
  /** last_seq of the latest `joined`: the ceiling for the first history page of an empty view */
  joinSeq = 0;
  /** Older messages exist on the server: null = not known yet (before the first `joined`). */
  hasMore = null;
  joinedOnce = false;
  online = new Set();
  /** user → timer that forgets they were typing */
  typing = new Map();
  /** scrollTop to restore when shown again; null = stick to the bottom */
  savedScroll = null;
  unseenBelow = false;
  draft = '';
  /** From `joined` (v2): public | private | dm, and the user's role; null until known. */
  kind = null;
  role = null;
  /** How the start of the history names the room: "#general", "your conversation with bob". */
  label;

  #loading = false;
  #loadError = '';
  /** Bumped when the view is rebuilt, so a history request from before is ignored. */
  #generation = 0;

  /**
   * @param {string} name
   * @param {{me: string, pane: import('./pane.js').MessagePane, onTypingChange(view): void}} ctx
   */
  constructor(name, { me, pane, onTypingChange }) {
    this.name = name;
    this.me = me;
    this.pane = pane;
    this.onTypingChange = onTypingChange;
    this.label = `#${name}`;
    this.top = h('div', { class: 'history-top' });
    this.list = h('ol', { class: 'msg-list', 'aria-label': `Messages in #${name}` });
    this.el = h('div', { class: 'room-view' }, this.top, this.list);
  }

  // ---------------------------------------------------------------------------- server events

  onJoined({ last_seq: lastSeq, truncated, online, resumed, reset, kind, role }) {
    this.online = new Set(online ?? []);
    if (kind) this.kind = kind;
    if (role !== undefined) this.role = role;
    if (resumed && (truncated || reset)) {
      // We missed more than one resume can carry (or the room was reset): the view now has a
      // hole. Rebuilding from history is the simplest thing that is certainly right.
      this.#rebuild(lastSeq);
      return;
    }
    this.joinSeq = Math.max(this.joinSeq, lastSeq ?? 0);
    this.joinedOnce = true;
    if (this.hasMore === null) {
      this.hasMore = this.#lowestSeq() > 1;
      this.#renderTop();
    }
    this.pane.maybeLoadOlder(this);
  }

  /**
   * A `message` frame. `live`: it arrived after the first join (news), not as that join's
   * replay of recent history.
   */
  addMessage(msg, { live = true } = {}) {
    if (!Number.isInteger(msg.seq) || this.messages.has(msg.seq)) return false;

    // Our own message coming back: it replaces its pending row instead of adding a line.
    const mine = msg.author === this.me;
    const pending = mine && msg.client_id != null ? this.pending.get(msg.client_id) : undefined;
    this.pane.beforeAppend(this, { notify: live && !pending });
    let row;
    if (pending) {
      this.pending.delete(msg.client_id);
      row = pending.row;
      confirmRow(row, msg);
    } else {
      row = messageRow(msg, { me: this.me });
    }
    this.#store(msg, row);
    return true;
  }

  /** A private room's `member` event, shown as a system line at its seq. Events are not
   * messages: they leave minSeq (the next history page's `before`) alone. */
  addEvent(frame) {
    if (!Number.isInteger(frame.seq) || this.messages.has(frame.seq)) return false;
    this.pane.beforeAppend(this, { notify: this.joinedOnce });
    const row = systemRow(frame);
    this.messages.set(frame.seq, { msg: frame, row });
    this.maxSeq = Math.max(this.maxSeq, frame.seq);
    this.#place(row, frame.seq);
    return true;
  }

  /** An `ack` for one of our sends (it may come before or after the `message` frame). */
  confirm(ack) {
    const pending = this.pending.get(ack.client_id);
    if (!pending) return;
    this.pending.delete(ack.client_id);
    if (this.messages.has(ack.seq) || (this.hasMore === true && ack.seq < this.#lowestSeq())) {
      // Already shown, or a duplicate of an old message outside the loaded window.
      this.#removeRow(pending.row);
      return;
    }
    const msg = {
      room: this.name, seq: ack.seq, author: this.me, body: pending.body,
      created_at: ack.created_at, client_id: ack.client_id,
    };
    confirmRow(pending.row, msg);
    this.#store(msg, pending.row);
  }

  // ------------------------------------------------------------------------- our own sends

  addPending(body, clientId) {
    const row = messageRow(
      { seq: null, author: this.me, body, created_at: null, client_id: clientId },
      { state: 'pending', me: this.me });
    this.pane.beforeAppend(this, { force: true });
    this.list.append(row);
    regroup(row);
    this.pending.set(clientId, { row, body });
  }

  fail(clientId, error) {
    const pending = this.pending.get(clientId);
    if (!pending) return;
    this.pane.beforeAppend(this); // the error line grows the row: keep a bottom reader at the bottom
    setRowState(pending.row, 'failed', error);
  }

  /** Back to pending; returns the body to resend (with the same client_id), or null. */
  retry(clientId) {
    const pending = this.pending.get(clientId);
    if (!pending) return null;
    setRowState(pending.row, 'pending');
    return pending.body;
  }

  discard(clientId) {
    const pending = this.pending.get(clientId);
    if (!pending) return;
    this.pending.delete(clientId);
    this.#removeRow(pending.row);
  }

  // ------------------------------------------------------------------------- presence, typing

  setTyping(user) {
    clearTimeout(this.typing.get(user));
    this.typing.set(user, setTimeout(() => this.clearTyping(user), TYPING_SHOWN_MS));
    this.onTypingChange(this);
  }

  clearTyping(user) {
    if (!this.typing.has(user)) return;
    clearTimeout(this.typing.get(user));
    this.typing.delete(user);
    this.onTypingChange(this);
  }

  dispose() {
    for (const timer of this.typing.values()) clearTimeout(timer);
    this.typing.clear();
    this.#generation += 1;
  }

  // ------------------------------------------------------------------------------ scrollback

  async loadOlder() {
    if (this.#loading || this.hasMore !== true) return;
    const generation = this.#generation;
    const before = this.#lowestSeq();
    this.#loading = true;
    this.#loadError = '';
    this.pane.preserve(this, () => this.#renderTop()); // the spinner must not push the text down
    this.el.setAttribute('aria-busy', 'true'); // don't read a page of history out loud
    let page = null;
    try {
      page = await fetchHistory(this.name, { before, limit: PAGE_SIZE });
    } catch (err) {
      if (generation === this.#generation) this.#loadError = err.message || 'unknown error';
    }
    if (generation !== this.#generation) return;
    this.#loading = false;
    this.el.removeAttribute('aria-busy');

    if (page) {
      const older = (page.messages ?? [])
        .filter((m) => Number.isInteger(m.seq) && m.seq < before && !this.messages.has(m.seq))
        .sort((a, b) => a.seq - b.seq);
      this.pane.preserve(this, () => {
        this.#prepend(older);
        // A page that brought nothing new cannot be followed by a useful one: stop rather
        // than loop, whatever has_more says.
        this.hasMore = Boolean(page.has_more) && older.length > 0 && this.#lowestSeq() > 1;
        this.#renderTop();
      });
      this.pane.maybeLoadOlder(this);
    } else {
      this.pane.preserve(this, () => this.#renderTop());
    }
  }

  // -------------------------------------------------------------------------------- private

  #lowestSeq() {
    return Math.min(this.minSeq, this.joinSeq + 1);
  }

  /** Record a confirmed message and put its row in seq order. */
  #store(msg, row) {
    this.messages.set(msg.seq, { msg, row });
    this.minSeq = Math.min(this.minSeq, msg.seq);
    this.maxSeq = Math.max(this.maxSeq, msg.seq);
    this.#place(row, msg.seq);
  }

  /** Put a row (a message's or an event's) at its seq among the confirmed rows. */
  #place(row, seq) {
    // Walk back from the end past pending rows and newer messages. Seqs nearly always arrive
    // in order, so this stops at the first confirmed row it sees.
    let after = null;
    for (let node = this.list.lastElementChild; node; node = node.previousElementSibling) {
      if (node !== row && node.dataset.seq && Number(node.dataset.seq) < seq) {
        after = node;
        break;
      }
    }
    const inPlace = row.isConnected && row.previousElementSibling === after
      && (after !== null || row === this.list.firstElementChild);
    if (!inPlace) {
      const oldNext = row.nextElementSibling;
      if (after) after.after(row);
      else this.list.prepend(row);
      regroup(oldNext);
    }
    regroup(row);
    regroup(row.nextElementSibling);
  }

  #prepend(msgs) {
    if (msgs.length === 0) return;
    const rows = msgs.map((msg) => {
      const row = messageRow(msg, { me: this.me });
      this.messages.set(msg.seq, { msg, row });
      return row;
    });
    const oldFirst = this.list.firstElementChild;
    this.list.prepend(...rows);
    this.minSeq = Math.min(this.minSeq, msgs[0].seq);
    this.maxSeq = Math.max(this.maxSeq, msgs.at(-1).seq);
    for (const row of rows) regroup(row);
    regroup(oldFirst);
  }

  #removeRow(row) {
    const next = row.nextElementSibling;
    row.remove();
    regroup(next);
  }

  /** Drop every confirmed message (pending ones stay) and page history in again. */
  #rebuild(lastSeq) {
    this.#generation += 1;
    this.#loading = false;
    this.#loadError = '';
    this.el.removeAttribute('aria-busy');
    for (const { row } of this.messages.values()) row.remove();
    for (const { row } of this.pending.values()) regroup(row);
    this.messages.clear();
    this.minSeq = Infinity;
    this.maxSeq = 0;
    this.joinSeq = lastSeq ?? 0;
    this.joinedOnce = true;
    this.hasMore = this.joinSeq > 0;
    this.savedScroll = null;
    this.#renderTop();
    if (this.pane.current === this) this.pane.scrollToBottom();
    this.loadOlder();
  }

  #renderTop() {
    const content = historyTop(this.label, {
      loading: this.#loading, error: this.#loadError, hasMore: this.hasMore,
    });
    this.top.replaceChildren(...(content ? [content] : []));
  }

  /** Name the room at the start of its history (a dm by the other person). */
  setLabel(label) {
    if (label === this.label) return;
    this.label = label;
    this.#renderTop();
  }

  /** Used by the "Try again" button after a failed page. */
  retryHistory() {
    this.#loadError = '';
    this.loadOlder();
  }
}
