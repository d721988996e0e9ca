// Everything the page holds for one room: its messages (by seq), the sender's pending
// messages (by client_id), who is online and typing, and the DOM that shows them.
//
// Invariants:
//  - a seq is shown at most once: `messages` is a Map seq → {msg, row}, checked first;
//  - confirmed rows, and the system lines of `member` events (private rooms), are in ascending
//    seq order; pending/failed rows follow them at the end;
//  - the loaded messages form one contiguous run of seqs, so "the lowest seq shown" is always
//    the right `before` for the next page of history (and "the highest" the right `after`);
//    except after a jump to a reply's original far back (`around`): then one gap row separates
//    that older run from the newer one until the messages in between are loaded;
//  - at most WINDOW rows of messages and member events are in the DOM: past it, the end
//    farther from the reader is dropped, and loaded again (REST history) when the reader
//    comes back to it. While the newest are dropped (`hasNewer`), live messages wait in a
//    bounded tail instead of the DOM;
//  - a private room's member lines between loaded messages are read back from its log
//    (member-lines.js), since history pages carry messages only.
//  - every local copy of a message obeys the `version` rule (message-state.js): message
//    frames, REST pages and edit/delete/reaction events may come in any order.

import { fetchHistory } from './api.js';
import { memberEvents } from './member-lines.js';
import { excerpt, fillQuote, fillRow } from './message-parts.js';
import { applyEvent, newer, normalize } from './message-state.js';
import { NewLine } from './new-line.js';
import {
  confirmRow, h, historyBottom, historyTop, messageRow, regroup, setRowState, systemRow,
} from './render.js';

const PAGE_SIZE = 200;
/** Rows of messages and member events kept in the DOM at most (pending sends come on top). */
const WINDOW = 500;
const GAP_PAGE_SIZE = 200;
const TYPING_SHOWN_MS = 4_000;
/** Events about messages not loaded (yet) are kept for this many targets, in case a page of
 * history read before them arrives after them. */
const EARLY_TARGETS_MAX = 1000;
const HIGHLIGHT_MS = 2_500;

export class RoomView {
  /** confirmed messages and member events: seq → {msg, row, system?} */
  messages = new Map();
  /** our unacknowledged sends: client_id → {row, body, replyTo} */
  pending = new Map();
  /** The message the composer answers (a seq), or null. */
  replyTo = null;
  minSeq = Infinity;
  maxSeq = 0;
  /** last_seq of the latest `joined`: the ceiling for the first history page of an empty view */
  joinSeq = 0;
  /** Older messages exist on the server: null = not known yet (before the first `joined`). */
  hasMore = null;
  /** Newer messages than the loaded ones exist: the newest were dropped to keep the window. */
  hasNewer = false;
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
  /** Quoted messages that are not loaded: seq → copy (kept by the version rule too), the
   * latest WINDOW of them; a quote whose copy was forgotten fetches it again. */
  #originals = new Map();
  #originalRequests = new Set();
  /** target → [edit/delete/reaction events] for messages not loaded yet */
  #early = new Map();
  /** {low, high, row}: the messages between seqs low and high are not loaded; or null. */
  #gap = null;
  #gapLoading = false;
  #gapObserver = null;
  #highlightTimer = 0;
  #loadingNewer = false;
  #newerError = '';
  /** Live messages that came while `hasNewer`: seq → copy, the newest WINDOW of them. */
  #tail = new Map();

  /**
   * @param {string} name
   * @param {{me: string, pane: import('./pane.js').MessagePane, onTypingChange(view): void}} ctx
   */
  constructor(name, { me, pane, onTypingChange, onQuoteChange = () => {} }) {
    this.name = name;
    this.me = me;
    this.pane = pane;
    this.onTypingChange = onTypingChange;
    this.onQuoteChange = onQuoteChange;
    this.label = `#${name}`;
    this.top = h('div', { class: 'history-top' });
    this.list = h('ol', { class: 'msg-list', 'aria-label': `Messages in #${name}` });
    this.bottom = h('div', { class: 'history-bottom' });
    this.el = h('div', { class: 'room-view' }, this.top, this.list, this.bottom);
    this.newLine = new NewLine(this);
  }

  // ---------------------------------------------------------------------------- server events

  onJoined({
    last_seq: lastSeq, truncated, online, resumed, reset, kind, role, last_read_seq: lastRead,
  }) {
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
      // A join without `since` replays messages only: the member lines among them are read.
      this.#backfill(this.#lowestSeq() - 1, this.joinSeq + 1, { above: true });
      // The room opens: what came after the cursor is new (v2; null for a public room's
      // first join, which makes the user a member with the cursor at the head).
      if (Number.isInteger(lastRead)) this.newLine.set(lastRead);
    }
    this.pane.maybeLoadOlder(this);
  }

  /**
   * A `message` frame. `live`: it arrived after the first join (news), not as that join's
   * replay of recent history.
   */
  addMessage(msg, { live = true } = {}) {
    if (!Number.isInteger(msg.seq)) return false;
    const known = this.messages.get(msg.seq);
    if (known) {
      // Replayed, read back, or seen before: it replaces our copy only if it is newer.
      if (!known.system) this.#update(known, newer(known.msg, msg));
      return false;
    }
    if (this.#inGap(msg.seq)) return false; // the gap's loading brings it in its current state
    if (this.#beyondWindow(msg.seq)) {
      this.#keepInTail(msg);
      this.pane.beforeAppend(this, { notify: live });
      return false;
    }

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
    this.#store(newer(null, msg), row);
    this.#trim();
    return true;
  }

  /** An `edit`, `delete` or `reaction` event (v2), applied by the version rule. */
  applyChange(event) {
    if (!Number.isInteger(event.seq) || !Number.isInteger(event.target)) return;
    this.maxSeq = Math.max(this.maxSeq, event.seq);
    const entry = this.messages.get(event.target);
    if (entry && !entry.system) {
      this.#update(entry, applyEvent(entry.msg, event, this.me));
      return;
    }
    const original = this.#originals.get(event.target);
    if (original) {
      const next = applyEvent(original, event, this.me);
      if (next) {
        this.#originals.set(event.target, next);
        this.#refreshQuotes(event.target);
      }
      return;
    }
    // Not loaded: a page of history may still bring a copy older than this event.
    const list = this.#early.get(event.target) ?? [];
    list.push(event);
    this.#early.delete(event.target);
    this.#early.set(event.target, list);
    if (this.#early.size > EARLY_TARGETS_MAX) this.#early.delete(this.#early.keys().next().value);
  }

  /** The local copy of message `seq` (loaded, or fetched as a quoted original), or null. */
  message(seq) {
    const entry = this.messages.get(seq);
    if (entry && !entry.system) return entry.msg;
    return this.#originals.get(seq) ?? null;
  }

  /** Show message `seq` as its local copy says (an edit shown at once was refused). */
  refresh(seq) {
    const entry = this.messages.get(seq);
    if (entry && !entry.system) this.#render(entry);
  }

  /** The row of message `seq`, if loaded. */
  rowOf(seq) {
    const entry = this.messages.get(seq);
    return entry && !entry.system ? entry.row : null;
  }

  /** Our newest message that can still be edited (for ↑ in an empty composer). */
  lastOwnEditable() {
    let best = null;
    for (const [seq, entry] of this.messages) {
      if (entry.system || entry.msg.author !== this.me || entry.msg.deleted) continue;
      if (best === null || seq > best) best = seq;
    }
    return best;
  }

  /** A private room's `member` event, shown as a system line at its seq. Events are not
   * messages: they leave minSeq (the next history page's `before`) alone. */
  addEvent(frame) {
    if (!Number.isInteger(frame.seq) || this.messages.has(frame.seq)) return false;
    this.maxSeq = Math.max(this.maxSeq, frame.seq);
    // Beyond the loaded window, the read-back on the way down brings it.
    if (this.#beyondWindow(frame.seq)) return false;
    this.pane.beforeAppend(this, { notify: this.joinedOnce });
    this.#placeEvent(frame, systemRow(frame));
    this.#trim();
    return true;
  }

  #placeEvent(frame, row) {
    this.messages.set(frame.seq, { msg: frame, row, system: true });
    this.#place(row, frame.seq);
  }

  /** An `ack` for one of our sends (it may come before or after the `message` frame). */
  confirm(ack) {
    const pending = this.pending.get(ack.client_id);
    if (!pending) return;
    this.pending.delete(ack.client_id);
    const msg = normalize({
      room: this.name, seq: ack.seq, author: this.me, body: pending.body,
      created_at: ack.created_at, client_id: ack.client_id, reply_to: pending.replyTo,
    });
    if (this.#beyondWindow(ack.seq)) this.#keepInTail(msg);
    if (this.messages.has(ack.seq) || this.#beyondWindow(ack.seq)
      || (this.hasMore === true && ack.seq < this.#lowestSeq())) {
      // Already shown, or outside the loaded window (a duplicate of an old message, or one
      // the reader scrolled far away from).
      this.#removeRow(pending.row);
      return;
    }
    confirmRow(pending.row, msg);
    this.#store(msg, pending.row);
    this.#trim();
  }

  // ------------------------------------------------------------------------- our own sends

  addPending(body, clientId, replyTo = null) {
    const msg = normalize({
      seq: null, author: this.me, body, created_at: null, client_id: clientId, reply_to: replyTo,
    });
    const row = messageRow(msg, { state: 'pending', me: this.me });
    fillRow(row, msg, { original: (s) => this.#original(s), confirmed: false, me: this.me });
    this.pane.beforeAppend(this, { force: true });
    this.list.append(row);
    regroup(row);
    this.pending.set(clientId, { row, body, replyTo });
  }

  /** Retried or failed sends keep their reply: what to send again. */
  pendingReply(clientId) {
    return this.pending.get(clientId)?.replyTo ?? null;
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
    this.#gapObserver?.disconnect();
    clearTimeout(this.#highlightTimer);
  }

  // ------------------------------------------------------------------------------ scrollback

  async loadOlder() {
    if (this.#loading || this.hasMore !== true) return;
    const before = this.#lowestSeq();
    this.#loading = true;
    this.#loadError = '';
    this.pane.preserve(this, () => this.#renderTop()); // the spinner must not push the text down
    this.#markBusy(); // don't read a page of history out loud
    const page = await this.#page({ before }, (error) => { this.#loadError = error; });
    if (page === undefined) return;
    this.#loading = false;
    this.#markBusy();

    if (page) {
      const older = this.#fresh(page.messages, (seq) => seq < before);
      this.pane.preserve(this, () => {
        this.#prepend(older);
        // A page that brought nothing new cannot be followed by a useful one: stop rather
        // than loop, whatever has_more says.
        this.hasMore = Boolean(page.has_more) && older.length > 0 && this.#lowestSeq() > 1;
        this.#renderTop();
      });
      this.#trim();
      this.#backfill(this.hasMore === false ? 0 : older[0]?.seq ?? before, before, { above: true });
      this.pane.maybeLoadOlder(this);
    } else {
      this.pane.preserve(this, () => this.#renderTop());
    }
  }

  /** The next page below the loaded messages, while the newest are not loaded (`hasNewer`);
   * the last one brings the tail of live messages back and the view follows the room again. */
  async loadNewer() {
    if (this.#loadingNewer || !this.hasNewer) return;
    const after = this.#edgeMessage(true) ?? this.joinSeq;
    this.#loadingNewer = true;
    this.#newerError = '';
    this.#renderBottom();
    this.#markBusy();
    const page = await this.#page({ after }, (error) => { this.#newerError = error; });
    if (page === undefined) return;
    this.#loadingNewer = false;
    this.#markBusy();
    if (!page) {
      this.#renderBottom();
      return;
    }
    const newer = this.#fresh(page.messages, (seq) => seq > after);
    // As in loadOlder: a page that brought nothing new ends the paging.
    const caughtUp = page.has_more !== true || newer.length === 0;
    if (caughtUp) {
      this.#takeTail(newer, newer.at(-1)?.seq ?? after);
      this.hasNewer = false;
    }
    for (const msg of newer) this.#store(msg, messageRow(msg, { me: this.me }), { quotes: false });
    this.#refreshQuotes(...newer.map((m) => m.seq));
    this.#renderBottom();
    this.#trim();
    this.#backfill(after, caughtUp ? Infinity : newer.at(-1).seq, { above: false });
    this.pane.maybeLoadNewer(this);
  }

  /** A page of history at one end: the page, null when it failed (`fail` is told why), or
   * undefined when the view was rebuilt meanwhile (the answer is stale). */
  async #page(query, fail) {
    const generation = this.#generation;
    try {
      const page = await fetchHistory(this.name, { ...query, limit: PAGE_SIZE });
      return generation === this.#generation ? page : undefined;
    } catch (err) {
      if (generation !== this.#generation) return undefined;
      fail(err.message || 'unknown error');
      return null;
    }
  }

  /** Show the newest messages again (the reader jumps there, or sends while far back). */
  toLatest() {
    if (!this.hasNewer) return;
    this.#rebuild(Math.max(this.maxSeq, this.joinSeq));
  }

  // ------------------------------------------------------------------------ jump to a message

  /**
   * Show message `seq` (a reply's original): scrolled to, highlighted and focused. One that is
   * older than what is loaded comes with the page `around` it; the messages between that
   * page and the loaded ones are a gap row, loaded when it is reached. One newer than what
   * is loaded (the reader scrolled far back) moves the window around it. False when the
   * message does not exist (any more). With `hold` (a search result) it stays marked.
   */
  async jumpTo(seq, { hold = false } = {}) {
    let row = this.rowOf(seq);
    if (!row && (seq < this.#lowestSeq() || this.#inGap(seq))) row = await this.#loadAround(seq);
    else if (!row && this.#beyondWindow(seq)) row = await this.#moveAround(seq);
    if (!row) return false;
    this.pane.reveal(this, row);
    for (const found of this.list.querySelectorAll('.is-found')) found.classList.remove('is-found');
    if (hold) row.classList.add('is-found'); // a search result stays marked
    row.classList.add('is-target');
    row.tabIndex = -1;
    row.focus({ preventScroll: true });
    clearTimeout(this.#highlightTimer);
    this.#highlightTimer = setTimeout(() => row.classList.remove('is-target'), HIGHLIGHT_MS);
    return true;
  }

  async #loadAround(seq) {
    if (this.#gap) this.#dropOlderRun();
    const page = await this.#pageAround(seq);
    if (!page) return null;
    const lowest = this.#lowestSeq();
    const older = this.#fresh(page.messages, (s) => s < lowest);
    if (older.length === 0) return this.rowOf(seq);
    const reachesLoaded = (page.messages ?? []).some((m) => m.seq >= lowest)
      || page.has_more_after === false;
    this.pane.preserve(this, () => {
      if (!reachesLoaded && this.messages.size > 0) this.#openGap(older.at(-1), lowest);
      this.#prepend(older);
      this.hasMore = page.has_more_before === true && this.#lowestSeq() > 1;
      this.#renderTop();
    });
    this.#trim('newest'); // the reader is about to be taken to the page just loaded
    this.#backfill(older[0].seq, reachesLoaded ? lowest : older.at(-1).seq + 1, { above: true });
    return this.rowOf(seq);
  }

  /**
   * Message `seq` lies past the newest loaded message, whose newer neighbours were dropped:
   * the page `around` it replaces what is loaded, too far from it to keep (a gap below would
   * hold the newest messages out of the DOM for good). Pages load above and below it as the
   * reader scrolls, and live messages keep waiting in the tail until the newest are loaded.
   */
  async #moveAround(seq) {
    const page = await this.#pageAround(seq);
    if (!page) return null;
    const found = (page.messages ?? []).filter((m) => Number.isInteger(m.seq))
      .map((m) => newer(null, m)).sort((a, b) => a.seq - b.seq);
    if (!found.some((m) => m.seq === seq)) return null;
    this.#clear();
    this.hasMore = page.has_more_before === true && found[0].seq > 1;
    this.hasNewer = page.has_more_after === true;
    const last = found.at(-1).seq;
    if (!this.hasNewer) this.#takeTail(found, last);
    for (const msg of found) this.#store(msg, messageRow(msg, { me: this.me }), { quotes: false });
    this.#refreshQuotes(...found.map((m) => m.seq));
    this.#renderTop();
    this.#renderBottom();
    this.#trim('newest'); // the reader is about to be taken to the message
    this.#backfill(this.hasMore ? found[0].seq : 0, this.hasNewer ? last : Infinity, { above: false });
    return this.rowOf(seq);
  }

  /** The page of history `around` message `seq`; null when it failed, or when the view was
   * rebuilt meanwhile (the answer is stale). */
  async #pageAround(seq) {
    const generation = this.#generation;
    try {
      const page = await fetchHistory(this.name, { around: seq, limit: PAGE_SIZE });
      return generation === this.#generation ? page : null;
    } catch {
      return null;
    }
  }

  /** The messages with seqs in (low, high) are missing between two loaded runs. */
  #openGap(below, high) {
    const row = h('li', {
      class: 'gap-line', 'data-testid': 'history-gap', 'data-system': 'true',
      'data-ts': new Date(below.created_at ?? Date.now()).getTime(),
    }, h('button', {
      type: 'button', class: 'link-btn', 'data-action': 'load-gap', 'data-testid': 'history-gap-load',
    }, 'Load the messages in between'));
    this.list.prepend(row);
    this.#gap = { low: below.seq, high: high, row };
    this.#gapObserver = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) this.loadGap();
    });
    this.#gapObserver.observe(row);
  }

  #inGap(seq) {
    return this.#gap != null && seq > this.#gap.low && seq < this.#gap.high;
  }

  #closeGap() {
    this.#gapObserver?.disconnect();
    this.#gapObserver = null;
    this.#gap?.row.remove();
    this.#gap = null;
  }

  /** A jump further back while a gap is open: forget the older run, the newer one stays. */
  #dropOlderRun() {
    const { high } = this.#gap;
    for (const [seq, entry] of [...this.messages]) {
      if (seq >= high) continue;
      entry.row.remove();
      this.messages.delete(seq);
    }
    this.#closeGap();
    this.minSeq = Math.min(...[...this.messages.values()]
      .filter((e) => !e.system).map((e) => e.msg.seq), Infinity);
    this.hasMore = true;
    regroup(this.list.firstElementChild);
  }

  /** Load the next page of the gap (oldest first). */
  async loadGap() {
    const gap = this.#gap;
    if (!gap || this.#gapLoading) return;
    this.#gapLoading = true;
    gap.row.setAttribute('aria-busy', 'true');
    const generation = this.#generation;
    let page = null;
    try {
      page = await fetchHistory(this.name, { after: gap.low, limit: GAP_PAGE_SIZE });
    } catch {
      // the gap stays, with its button
    }
    this.#gapLoading = false;
    gap.row.removeAttribute('aria-busy');
    if (!page || generation !== this.#generation || gap !== this.#gap) return;
    const inside = this.#fresh(page.messages, (s) => s > gap.low && s < gap.high);
    const closes = page.has_more !== true
      || (page.messages ?? []).some((m) => m.seq >= gap.high) || inside.length === 0;
    const mutate = () => {
      const entries = inside.map((msg) => ({ msg, row: messageRow(msg, { me: this.me }) }));
      gap.row.before(...entries.map((e) => e.row));
      for (const entry of entries) {
        this.messages.set(entry.msg.seq, entry);
        regroup(entry.row);
        this.#adopt(entry, { quotes: false });
      }
      this.#refreshQuotes(...inside.map((m) => m.seq));
      if (closes) {
        const next = gap.row.nextElementSibling;
        this.#closeGap();
        regroup(next);
      } else {
        gap.low = inside.at(-1).seq;
        regroup(gap.row);
      }
    };
    const above = this.pane.isAbove(this, gap.row);
    if (above) this.pane.preserve(this, mutate);
    else mutate();
    this.#trim();
    if (inside.length > 0) this.#backfill(inside[0].seq, closes ? gap.high : inside.at(-1).seq + 1, { above });
    if (this.#gap === gap) {
      // Observing again reports whether the gap is still in sight: then the next page loads.
      this.#gapObserver?.unobserve(gap.row);
      this.#gapObserver?.observe(gap.row);
    }
  }

  // -------------------------------------------------------------------------------- private

  #lowestSeq() {
    return Math.min(this.minSeq, this.joinSeq + 1);
  }

  /** The seq of the first (or, `fromEnd`, the last) loaded message, or null. */
  #edgeMessage(fromEnd) {
    const step = fromEnd ? 'previousElementSibling' : 'nextElementSibling';
    for (let node = fromEnd ? this.list.lastElementChild : this.list.firstElementChild; node;
      node = node[step]) {
      if (node.dataset.seq && !node.dataset.system) return Number(node.dataset.seq);
    }
    return null;
  }

  /** Whether `seq` lies past the newest loaded message while the newest are not loaded. */
  #beyondWindow(seq) {
    return this.hasNewer && seq > (this.#edgeMessage(true) ?? 0);
  }

  /** The newest are loaded again: `msgs`, which end at seq `last`, take the live messages
   * that waited in the tail after it. */
  #takeTail(msgs, last) {
    for (const msg of this.#tail.values()) if (msg.seq > last) msgs.push(msg);
    this.#tail.clear();
  }

  #keepInTail(msg) {
    this.maxSeq = Math.max(this.maxSeq, msg.seq);
    const known = this.#tail.get(msg.seq);
    const copy = newer(known ?? null, msg);
    if (copy) this.#tail.set(msg.seq, copy);
    // The oldest ones are the first the pages on the way down bring again.
    if (this.#tail.size > WINDOW) this.#tail.delete(Math.min(...this.#tail.keys()));
  }

  /**
   * Keep at most WINDOW rows: drop the end farther from the reader (`side`: 'newest' or
   * 'oldest'), which pages of history bring back when the reader returns to it. Rows below
   * the reader go without moving them; rows above go under `preserve`.
   */
  #trim(side = this.pane.farSide(this)) {
    const excess = this.messages.size - WINDOW;
    if (excess > 0 && side === 'newest') this.#drop(excess, true);
    else if (excess > 0) this.pane.preserve(this, () => this.#drop(excess, false));
    // Every change of the loaded rows ends here: the row of the first unread one may be new.
    this.newLine.place();
  }

  #drop(count, newest) {
    const step = newest ? 'previousElementSibling' : 'nextElementSibling';
    let left = count;
    let node = newest ? this.list.lastElementChild : this.list.firstElementChild;
    while (node && left > 0) {
      const next = node[step];
      const seq = Number(node.dataset.seq);
      if (node.dataset.seq && this.messages.get(seq)?.row === node) {
        node.remove();
        this.messages.delete(seq);
        left -= 1;
      }
      node = next;
    }
    const gap = this.#gap;
    if (newest) {
      // A gap below which nothing is left is now simply the end of what is loaded.
      if (gap && (this.#edgeMessage(true) ?? 0) < gap.high) this.#closeGap();
      this.hasNewer = true;
      regroup(this.pending.values().next().value?.row);
      this.#renderBottom();
    } else {
      if (gap && this.list.firstElementChild === gap.row) this.#closeGap();
      this.minSeq = this.#edgeMessage(false) ?? Infinity;
      this.hasMore = true;
      regroup(this.list.firstElementChild);
      this.#renderTop();
    }
  }

  /**
   * Show the `member` events with `after` < seq < `before` of a private room (history pages
   * carry messages only), where they fall inside the loaded window. `above`: the range lies
   * above the reader, whose view must not move.
   */
  async #backfill(after, before, { above }) {
    if (this.kind !== 'private' || !(before > after + 1)) return;
    const generation = this.#generation;
    let events;
    try {
      events = await memberEvents(this.name, Math.max(after, 0), before);
    } catch {
      return; // the messages are there; their member lines are missing until a reload
    }
    if (generation !== this.#generation) return;
    // An event below the lowest loaded message belongs there only once nothing is older.
    const low = this.hasMore === false ? 0 : this.#edgeMessage(false) ?? Infinity;
    const high = this.hasNewer ? this.#edgeMessage(true) ?? 0 : Infinity;
    const fresh = events.filter((e) => e.seq > low && e.seq < high
      && !this.messages.has(e.seq) && !this.#inGap(e.seq));
    if (fresh.length === 0) return;
    const mutate = () => {
      for (const frame of fresh) {
        const row = systemRow(frame);
        this.#placeEvent(frame, row);
        // No time of its own: it sits under the day of the message before it.
        const ts = row.previousElementSibling?.dataset.ts ?? row.nextElementSibling?.dataset.ts;
        if (ts) row.dataset.ts = ts;
        regroup(row);
        regroup(row.nextElementSibling);
      }
    };
    if (above) this.pane.preserve(this, mutate);
    else mutate();
    this.#trim();
  }

  #markBusy() {
    if (this.#loading || this.#loadingNewer) this.el.setAttribute('aria-busy', 'true');
    else this.el.removeAttribute('aria-busy');
  }

  #renderBottom() {
    const content = this.hasNewer || this.#loadingNewer
      ? historyBottom({ loading: this.#loadingNewer, error: this.#newerError }) : null;
    this.bottom.replaceChildren(...(content ? [content] : []));
  }

  /** Record a confirmed message and put its row in seq order. `quotes: false`: the caller
   * refreshes the quotes of a whole batch at once. */
  #store(msg, row, { quotes = true } = {}) {
    const entry = { msg, row };
    this.messages.set(msg.seq, entry);
    this.minSeq = Math.min(this.minSeq, msg.seq);
    this.maxSeq = Math.max(this.maxSeq, msg.seq);
    this.#place(row, msg.seq);
    this.#adopt(entry, { quotes });
  }

  /** A message just loaded: apply the events that came before it, show it, and (unless
   * `quotes` is false) refresh the quotes of its replies. */
  #adopt(entry, { quotes = true } = {}) {
    const seq = entry.msg.seq;
    const early = this.#early.get(seq);
    if (early) {
      this.#early.delete(seq);
      for (const event of early.sort((a, b) => a.seq - b.seq)) {
        entry.msg = applyEvent(entry.msg, event, this.me) ?? entry.msg;
      }
    }
    // Loaded now; once the window drops it, a quote of it fetches it again.
    this.#originalRequests.delete(seq);
    const fetched = this.#originals.get(seq);
    if (fetched) {
      this.#originals.delete(seq);
      if (fetched.version > entry.msg.version) entry.msg = fetched;
    }
    this.#render(entry);
    if (quotes) this.#refreshQuotes(seq);
  }

  /** A newer copy (or null: nothing to do) of a loaded message. */
  #update(entry, next) {
    if (!next) return;
    entry.msg = next;
    this.#render(entry);
    this.#refreshQuotes(next.seq);
  }

  #render(entry) {
    const { row, msg } = entry;
    if (msg.deleted) row.querySelector('.msg-editor')?.dispatchEvent(new Event('cancel-edit'));
    fillRow(row, msg, { original: (s) => this.#original(s), confirmed: true, me: this.me });
  }

  /** What a quote shows of message `seq`; unknown ones are fetched once (`around`). */
  #original(seq) {
    const known = this.message(seq);
    if (known) return known;
    if (!this.#originalRequests.has(seq)) {
      this.#originalRequests.add(seq);
      const generation = this.#generation;
      fetchHistory(this.name, { around: seq, limit: 1 }).then((page) => {
        if (generation !== this.#generation || this.message(seq)) return;
        const found = (page?.messages ?? []).find((m) => m.seq === seq);
        if (!found) return;
        let copy = newer(null, found);
        for (const event of (this.#early.get(seq) ?? []).sort((a, b) => a.seq - b.seq)) {
          copy = applyEvent(copy, event, this.me) ?? copy;
        }
        this.#early.delete(seq);
        this.#originals.set(seq, copy);
        if (this.#originals.size > WINDOW) {
          const [oldest] = this.#originals.keys();
          this.#originals.delete(oldest);
          this.#originalRequests.delete(oldest);
        }
        this.#refreshQuotes(seq);
      }, () => {}); // the quote keeps saying "an earlier message"
    }
    return null;
  }

  /** Show the current state of messages `seqs` in the quotes of their replies (one pass
   * over the quotes, however many seqs: a page of history comes as one batch). */
  #refreshQuotes(...seqs) {
    const changed = new Set(seqs);
    for (const quote of this.list.querySelectorAll('.msg-quote[data-target]')) {
      const seq = Number(quote.dataset.target);
      if (changed.has(seq)) fillQuote(quote, this.message(seq));
    }
    if (changed.has(this.replyTo)) this.onQuoteChange(this);
  }

  /** The messages of a REST page worth adding (ascending, not shown yet, `keep(seq)`),
   * as local copies; the ones already shown are updated by the version rule instead. */
  #fresh(messages, keep) {
    const out = [];
    for (const m of messages ?? []) {
      if (!Number.isInteger(m.seq)) continue;
      const known = this.messages.get(m.seq);
      if (known) {
        if (!known.system) this.#update(known, newer(known.msg, m));
      } else if (keep(m.seq)) {
        out.push(newer(null, m));
      }
    }
    return out.sort((a, b) => a.seq - b.seq);
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
    const entries = msgs.map((msg) => ({ msg, row: messageRow(msg, { me: this.me }) }));
    const oldFirst = this.list.firstElementChild;
    this.list.prepend(...entries.map((e) => e.row));
    this.minSeq = Math.min(this.minSeq, msgs[0].seq);
    this.maxSeq = Math.max(this.maxSeq, msgs.at(-1).seq);
    for (const entry of entries) {
      this.messages.set(entry.msg.seq, entry);
      regroup(entry.row);
      this.#adopt(entry, { quotes: false });
    }
    regroup(oldFirst);
    this.#refreshQuotes(...msgs.map((m) => m.seq));
  }

  #removeRow(row) {
    const next = row.nextElementSibling;
    row.remove();
    regroup(next);
  }

  /** Drop every confirmed message (pending ones stay) and every page of history under way
   * for them (their answers are ignored). */
  #clear() {
    this.#generation += 1;
    this.#loading = false;
    this.#loadError = '';
    this.#loadingNewer = false;
    this.#newerError = '';
    this.el.removeAttribute('aria-busy');
    for (const { row } of this.messages.values()) row.remove();
    for (const { row } of this.pending.values()) regroup(row);
    this.messages.clear();
    this.#closeGap();
    this.minSeq = Infinity;
  }

  /** Drop every confirmed message (pending ones stay) and page history in again. */
  #rebuild(lastSeq) {
    this.#clear();
    this.hasNewer = false;
    this.#tail.clear();
    this.#renderBottom();
    this.#originals.clear();
    this.#originalRequests.clear();
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
