// Moving the user's read cursor: while the newest messages of the room on screen are in view
// and the page is visible and focused, the socket's `read` command tells the server how far
// the user has read. At most one command per READ_EVERY_MS, and only when it would move the
// cursor; the server answers every tab of the user with a `read` frame (room-list.js).

const READ_EVERY_MS = 300;

/** Whether the reader can see the page: visible and focused. */
export const attentive = () => !document.hidden && document.hasFocus();

export class ReadCursor {
  #socket;
  #rooms;
  /** room → the seq last sent, until the server's `read` frame moves the list's cursor */
  #sent = new Map();
  /** {room, seq} waiting for the timer, or null */
  #due = null;
  #timer = 0;

  /**
   * @param {import('./socket.js').ChatSocket} socket
   * @param {import('./room-list.js').RoomList} rooms where the cursor in force is kept
   */
  constructor(socket, rooms) {
    this.#socket = socket;
    this.#rooms = rooms;
  }

  /** The reader sees the newest messages of `view` (the caller checked they are in view). */
  seen(view) {
    // The bottom of what is loaded is not the newest while the newest are not loaded.
    if (!attentive() || view.hasNewer) return;
    const seq = Math.max(view.maxSeq, view.joinSeq);
    const room = view.name;
    const known = Math.max(this.#rooms.get(room)?.last_read_seq ?? -1, this.#sent.get(room) ?? -1);
    if (!(seq > known)) return;
    if (this.#due && this.#due.room !== room) this.#flush();
    this.#due = { room, seq };
    this.#timer ||= setTimeout(() => this.#flush(), READ_EVERY_MS);
  }

  /** A `read` was refused (rate limited, not a member) or lost with its connection: the next
   * sight of the newest messages sends it again. */
  forget() {
    this.#sent.clear();
  }

  dispose() {
    clearTimeout(this.#timer);
    this.#timer = 0;
    this.#due = null;
  }

  #flush() {
    clearTimeout(this.#timer);
    this.#timer = 0;
    const due = this.#due;
    this.#due = null;
    // The cursor may have moved meanwhile (a `joined`, another tab, our own message).
    if (!due || !(due.seq > (this.#rooms.get(due.room)?.last_read_seq ?? -1))) return;
    if (this.#socket.read(due.room, due.seq)) this.#sent.set(due.room, due.seq);
  }
}
