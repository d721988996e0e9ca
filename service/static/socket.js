// One WebSocket for every room of the tab.
//
// It owns three things the UI should not have to think about:
//  - reconnection with capped, jittered exponential backoff;
//  - resume bookkeeping: the highest seq received per room, so a reconnect joins with `since`
//    and the server sends exactly what was missed (nothing lost, nothing doubled);
//  - the outbox of unacknowledged sends, re-sent with the same client_id after a reconnect
//    (the server stores a (room, author, client_id) once, so resending is always safe).
//
// It knows nothing about the DOM; it reports through events whose `detail` is the frame:
// message, edit, delete, reaction, member (v2), rooms, read, activity, notification (v2, the
// user's own stream), joined
// (+resumed, reset), left,
// ack, presence, typing, pong, error (frames that no pending send claimed), plus state
// {state}, sendfailed {room, client_id, code, detail}, unauthorized (close 1008) and
// handshakefailed (closed before it ever opened).

import { Outbox } from './outbox.js';

const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 10_000;
/** The backoff resets only after a connection stayed up this long, so a server that accepts
 * and immediately closes (1013, a crash loop) cannot make us reconnect in a tight loop. */
const STABLE_AFTER_MS = 5_000;
const PING_AFTER_IDLE_MS = 25_000;
const PONG_TIMEOUT_MS = 10_000;
const JOIN_RETRY_MS = 2_000;

export class ChatSocket extends EventTarget {
  /** connected | reconnecting | offline */
  state = 'offline';

  #me;
  #ws = null;
  #opened = false; // whether #ws ever reached OPEN (a refused handshake never does)
  #stopped = true;
  #attempt = 0;
  #retryTimer = 0;
  #stableTimer = 0;
  #idleTimer = 0;
  /** room → {lastSeq: number|null, since: number|null, joining, joined} */
  #rooms = new Map();
  #outbox = new Outbox({
    canSend: (room) => this.isJoined(room) && this.#isOpen(),
    write: (frame) => this.#raw(frame),
    ensureJoined: (room) => this.#ensureJoined(room),
    failed: (detail) => this.#emit('sendfailed', detail),
  });
  #listeners = null;
  #commands = 0;

  constructor(me) {
    super();
    this.#me = me;
  }

  start() {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#listeners = new AbortController();
    const { signal } = this.#listeners;
    window.addEventListener('online', () => this.reconnectNow(), { signal });
    // An "offline" socket may linger half-open for minutes; drop it so the state is honest.
    window.addEventListener('offline', () => {
      this.#drop();
      this.#setState('offline');
    }, { signal });
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState !== 'visible') return;
      if (!this.#ws) this.reconnectNow();
      else this.#probe(); // timers were throttled while hidden: check the line is still alive
    }, { signal });
    this.#connect();
  }

  stop() {
    this.#stopped = true;
    this.#listeners?.abort();
    this.#outbox.clear();
    const ws = this.#ws;
    this.#teardown();
    if (ws) {
      detach(ws);
      ws.close(1000, 'bye');
    }
    this.#setState('offline');
  }

  /** Skip the remaining backoff (the browser came back online, the user asked, ...). */
  reconnectNow() {
    if (this.#stopped || this.#ws) return;
    this.#attempt = 0;
    this.#connect();
  }

  /** Join a room on this connection and on every future one (with `since` from then on). */
  join(room) {
    if (this.#rooms.has(room)) return;
    this.#rooms.set(room, { lastSeq: null, since: null, joining: false, joined: false });
    if (this.#isOpen()) this.#sendJoin(room);
  }

  /** Stop following a room on every future connection: the user is no longer a member. No
   * `leave` is sent: the server ends the subscription itself when a membership ends (`left`
   * with reason removed), and a `leave` racing that would only earn a `not_joined`. */
  forget(room) {
    if (!this.#rooms.delete(room)) return;
    this.#outbox.failRoom(room, 'forbidden', 'You are no longer a member of this room.');
  }

  isJoined(room) {
    return this.#rooms.get(room)?.joined === true;
  }

  /** Queue a message; it goes out now if the room is joined, else when it is (re)joined. */
  send(room, body, clientId, replyTo = null) {
    this.#outbox.add(room, body, clientId, replyTo);
  }

  /**
   * An `edit`, `delete` or `react` (v2) for a joined room, now or never: unlike a send it is
   * not queued (a change made offline would land long after the reader moved on). Its `ack`
   * or `error` carries `ref`, which this returns; null when it could not be written.
   */
  command(frame) {
    if (!this.isJoined(frame.room)) return null;
    this.#commands += 1;
    const ref = `${frame.type}:${this.#commands}`;
    return this.#raw({ ...frame, ref }) ? ref : null;
  }

  /** Move the read cursor (v2); needs membership, not a join. False when it could not be
   * written (not connected). Its `ack` or `error` carries a ref starting `read:`. */
  read(room, seq) {
    this.#commands += 1;
    return this.#raw({ type: 'read', room, seq, ref: `read:${this.#commands}` });
  }

  typing(room) {
    if (this.isJoined(room)) this.#raw({ type: 'typing', room });
  }

  // -------------------------------------------------------------------------------------------

  #connect() {
    clearTimeout(this.#retryTimer);
    this.#setState(navigator.onLine === false ? 'offline' : 'reconnecting');
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let ws;
    try {
      ws = new WebSocket(`${scheme}//${location.host}/ws`);
    } catch {
      this.#scheduleReconnect();
      return;
    }
    this.#ws = ws;
    this.#opened = false;
    ws.onopen = () => this.#onOpen(ws);
    ws.onmessage = (event) => this.#onFrame(ws, event.data);
    ws.onclose = (event) => this.#onClose(ws, event.code);
    ws.onerror = () => {}; // a close event always follows; that is where we act
  }

  #onOpen(ws) {
    if (ws !== this.#ws) return;
    this.#opened = true;
    this.#setState('connected');
    this.#stableTimer = setTimeout(() => { this.#attempt = 0; }, STABLE_AFTER_MS);
    this.#armIdle();
    for (const room of this.#rooms.keys()) this.#sendJoin(room);
  }

  #onFrame(ws, data) {
    if (ws !== this.#ws) return;
    this.#armIdle(); // any traffic proves the line is alive
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (!frame || typeof frame !== 'object') return;
    const room = typeof frame.room === 'string' ? this.#rooms.get(frame.room) : undefined;

    switch (frame.type) {
      case 'message': {
        if (!room || !Number.isInteger(frame.seq)) break;
        // Only message frames advance the resume point. An ack's seq must not: frames with
        // lower seqs may still be on their way, and `since` would skip them.
        room.lastSeq = Math.max(room.lastSeq ?? 0, frame.seq);
        // Our own send committed but the ack was lost with the old connection: the replay
        // proves it landed, so settle it now instead of resending on `joined`.
        if (frame.client_id != null && frame.author === this.#me) {
          this.#outbox.settle(frame.client_id, frame.room);
        }
        break;
      }
      case 'member':
      case 'edit':
      case 'delete':
      case 'reaction':
        // Every event of the room's log (v2) takes a seq like a message, and a resume replays
        // every event above `since`: each advances the resume point too. They reach a
        // connection in seq order, so none below it can still be on its way.
        if (room && Number.isInteger(frame.seq)) room.lastSeq = Math.max(room.lastSeq ?? 0, frame.seq);
        break;
      case 'joined': {
        if (!room) break;
        const resumed = room.since != null;
        // A `since` beyond the room's last seq is served as a plain join (the room was reset
        // server-side): what we hold is stale, the UI must rebuild the room.
        const reset = resumed && frame.last_seq < room.since;
        room.lastSeq = reset ? frame.last_seq : Math.max(room.lastSeq ?? 0, frame.last_seq ?? 0);
        room.joining = false;
        room.joined = true;
        this.#emit('joined', { ...frame, resumed, reset });
        this.#outbox.flush(frame.room);
        return;
      }
      case 'left':
        if (room && frame.reason === 'removed') {
          // No longer a member: rejoining would be refused, and what waits to be sent cannot go.
          this.#rooms.delete(frame.room);
          this.#outbox.failRoom(frame.room, 'forbidden', 'You are no longer a member of this room.');
        } else if (room) {
          room.joined = false;
        }
        break;
      case 'ack':
        this.#outbox.settle(frame.client_id, frame.room);
        break;
      case 'error':
        if (this.#outbox.claim(frame) || this.#claimJoinError(frame)) return;
        break;
      default:
        break;
    }
    this.#emit(frame.type, frame);
  }

  /** An error answering one of our joins (matched by its ref). True when handled here. */
  #claimJoinError(frame) {
    const name = typeof frame.ref === 'string' && frame.ref.startsWith('join:')
      ? frame.ref.slice(5) : null;
    const room = name != null ? this.#rooms.get(name) : undefined;
    if (!room) return false;
    room.joining = false;
    if (frame.code === 'conflict') {
      // Already joined on this connection: treat it as such rather than wedge the outbox.
      room.joined = true;
      this.#outbox.flush(name);
      return true;
    }
    if (frame.code === 'unavailable') {
      setTimeout(() => this.#ensureJoined(name), JOIN_RETRY_MS);
      return false; // still worth telling the user
    }
    // bad_request, forbidden, too_many_rooms: it would fail the same way on every reconnect.
    this.#rooms.delete(name);
    this.#outbox.failRoom(name, frame.code, frame.detail);
    return false;
  }

  /** (Re)join a known room unless a join is already under way; join an unknown one. */
  #ensureJoined(name) {
    const room = this.#rooms.get(name);
    if (!room) this.join(name);
    else if (this.#isOpen() && !room.joining) this.#sendJoin(name);
  }

  #onClose(ws, code) {
    if (ws !== this.#ws) return;
    const opened = this.#opened;
    this.#teardown();
    if (this.#stopped) return;
    if (code === 1008) {
      // Authentication or origin refused: reconnecting cannot help, the user must log in.
      this.stop();
      this.#emit('unauthorized', { code });
      return;
    }
    // A handshake refused with HTTP 403 surfaces as a bare 1006 before `open`; let the app ask
    // the REST API whether the session is still valid.
    if (!opened) this.#emit('handshakefailed', { code });
    this.#scheduleReconnect();
  }

  #scheduleReconnect() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** this.#attempt);
    this.#attempt = Math.min(this.#attempt + 1, 16);
    // Jitter spreads the tabs that lost the same instance (1012) over the window instead of
    // having them all knock on the next instance in the same millisecond.
    const delay = base / 2 + Math.random() * (base / 2);
    this.#setState(navigator.onLine === false ? 'offline' : 'reconnecting');
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => this.#connect(), delay);
  }

  /** Forget the current socket (closed or given up on) and everything tied to its lifetime. */
  #teardown() {
    clearTimeout(this.#idleTimer);
    clearTimeout(this.#stableTimer);
    clearTimeout(this.#retryTimer);
    this.#ws = null;
    this.#opened = false;
    for (const room of this.#rooms.values()) {
      room.joining = false;
      room.joined = false;
    }
    this.#outbox.pause(); // unacked sends stay queued until the rooms are joined again
  }

  /** Give up on a connection that stopped answering, without waiting for a close handshake
   * that a dead peer will never complete. */
  #drop() {
    const ws = this.#ws;
    if (!ws) return;
    detach(ws);
    try {
      ws.close(4000, 'unresponsive');
    } catch {
      // already closing
    }
    this.#onClose(ws, 4000);
  }

  #armIdle() {
    clearTimeout(this.#idleTimer);
    this.#idleTimer = setTimeout(() => this.#probe(), PING_AFTER_IDLE_MS);
  }

  /** Ping and drop the connection unless something (the pong, anything) arrives in time. */
  #probe() {
    if (!this.#isOpen()) return;
    this.#raw({ type: 'ping' });
    clearTimeout(this.#idleTimer);
    this.#idleTimer = setTimeout(() => this.#drop(), PONG_TIMEOUT_MS);
  }

  #sendJoin(room) {
    const state = this.#rooms.get(room);
    state.joined = false;
    state.joining = true;
    state.since = state.lastSeq;
    const frame = { type: 'join', room, ref: `join:${room}` };
    if (state.lastSeq != null) frame.since = state.lastSeq;
    this.#raw(frame);
  }

  #isOpen() {
    return this.#ws?.readyState === WebSocket.OPEN;
  }

  #raw(frame) {
    if (!this.#isOpen()) return false;
    this.#ws.send(JSON.stringify(frame));
    return true;
  }

  #setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.#emit('state', { state });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

function detach(ws) {
  ws.onopen = null;
  ws.onmessage = null;
  ws.onclose = null;
  ws.onerror = null;
}
