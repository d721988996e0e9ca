// Sends that the server has not acknowledged yet.
//
// Each entry keeps its client_id for life: the server stores a (room, author, client_id) once,
// so resending after a reconnect, a timeout or a rate limit can never post a message twice.
// Entries are written only while their room is joined on an open socket; the socket calls
// flush(room) on every `joined`, which is what resends them after a reconnect.

const ACK_TIMEOUT_MS = 10_000;

export class Outbox {
  /** client_id → {room, body, clientId, replyTo, ackTimer, retryTimer}; insertion order = send order */
  #entries = new Map();
  #link;

  /**
   * @param {{
   *   canSend(room: string): boolean,  // joined on an open socket
   *   write(frame: object): void,
   *   ensureJoined(room: string): void, // join (or re-join) so that a flush follows
   *   failed(detail: {room, client_id, code, detail}): void,
   * }} link
   */
  constructor(link) {
    this.#link = link;
  }

  /** Queue a message and write it now if possible. A retry goes to the back of the queue. */
  add(room, body, clientId, replyTo = null) {
    this.#cancel(this.#entries.get(clientId));
    this.#entries.delete(clientId);
    const entry = { room, body, clientId, replyTo, ackTimer: 0, retryTimer: 0 };
    this.#entries.set(clientId, entry);
    this.#transmit(entry);
  }

  /** The room was (re)joined: write everything waiting for it, in the order it was sent. */
  flush(room) {
    for (const entry of this.#entries.values()) {
      if (entry.room === room && !entry.retryTimer) this.#transmit(entry);
    }
  }

  /** An ack, or our own message seen coming back: done. */
  settle(clientId, room) {
    const entry = this.#entries.get(clientId);
    if (!entry || (room !== undefined && entry.room !== room)) return;
    this.#cancel(entry);
    this.#entries.delete(clientId);
  }

  /** Handle an `error` frame about one of our sends; false when it is about something else. */
  claim(frame) {
    const entry = frame.client_id != null ? this.#entries.get(frame.client_id) : undefined;
    if (!entry) return false;
    this.#cancel(entry);
    switch (frame.code) {
      case 'rate_limited': {
        // Nothing was stored: wait as told (plus jitter, so a burst does not retry as a burst).
        const wait = Math.max(0, Number(frame.retry_after_ms) || 1000) + Math.random() * 100;
        entry.retryTimer = setTimeout(() => {
          entry.retryTimer = 0;
          this.#transmit(entry);
        }, wait);
        break;
      }
      case 'not_joined':
        this.#link.ensureJoined(entry.room); // the flush on its `joined` resends
        break;
      default:
        this.#fail(entry, frame.code, frame.detail);
    }
    return true;
  }

  /** The room cannot be joined at all: everything queued for it fails. */
  failRoom(room, code, detail) {
    for (const entry of [...this.#entries.values()]) {
      if (entry.room === room) this.#fail(entry, code, detail);
    }
  }

  /** The connection is gone: stop the ack clocks; they restart when entries are rewritten. */
  pause() {
    for (const entry of this.#entries.values()) {
      clearTimeout(entry.ackTimer);
      entry.ackTimer = 0;
    }
  }

  clear() {
    for (const entry of this.#entries.values()) this.#cancel(entry);
    this.#entries.clear();
  }

  #transmit(entry) {
    if (!this.#link.canSend(entry.room)) {
      this.#link.ensureJoined(entry.room);
      return;
    }
    clearTimeout(entry.ackTimer);
    const frame = { type: 'send', room: entry.room, body: entry.body, client_id: entry.clientId };
    if (entry.replyTo != null) frame.reply_to = entry.replyTo;
    this.#link.write(frame);
    entry.ackTimer = setTimeout(
      () => this.#fail(entry, 'timeout', 'No reply from the server.'), ACK_TIMEOUT_MS);
  }

  #fail(entry, code, detail) {
    this.#cancel(entry);
    this.#entries.delete(entry.clientId);
    this.#link.failed({ room: entry.room, client_id: entry.clientId, code, detail });
  }

  #cancel(entry) {
    if (!entry) return;
    clearTimeout(entry.ackTimer);
    clearTimeout(entry.retryTimer);
    entry.ackTimer = 0;
    entry.retryTimer = 0;
  }
}
