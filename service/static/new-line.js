// The "New messages" line of a room: above the first message after the read cursor as it was
// when the reader arrived (opened the room, came back to it or to the tab), so they see where
// what they have not read begins even after the cursor moved on.
//
// The line is a part of that message's row, like a day divider, not a row of its own: the
// window of rows (room-view.js) drops and reloads it with its message, and finding the row
// again is all it takes to show the line again.

import { h, regroup } from './render.js';

export class NewLine {
  /** The cursor the line follows, or null: no line. */
  #from = null;
  /** The row that carries the line. */
  #row = null;
  #view;

  /** @param {import('./room-view.js').RoomView} view */
  constructor(view) {
    this.#view = view;
  }

  /** The seq the line follows (null: none). */
  get from() {
    return this.#from;
  }

  /** Whether the line is on screen (in the loaded rows). */
  get shown() {
    return Boolean(this.#row?.isConnected);
  }

  /** Put the line after read cursor `seq` (the newest message read). */
  set(seq) {
    if (seq === this.#from) return;
    this.#from = seq;
    this.#unmark();
    this.place();
  }

  clear() {
    this.#from = null;
    this.#unmark();
  }

  /** Show the line on the row of the first message after the cursor, if it is loaded (and
   * so is what lies before it): called after every change of the loaded rows. */
  place() {
    const from = this.#from;
    if (from == null || (this.#row?.isConnected && this.#row.dataset.newLine)) return;
    const view = this.#view;
    // Unless the message before the first unread one is loaded (or nothing is older), the
    // first loaded message after the cursor may not be the first after it.
    if (!(view.minSeq <= from + 1 || view.hasMore === false)) return;
    let first = null;
    for (const [seq, entry] of view.messages) {
      if (!entry.system && seq > from && (first === null || seq < first.msg.seq)) first = entry;
    }
    // Your own message is never news: nothing of others came before it.
    if (first && first.msg.author !== view.me) this.#mark(first.row);
  }

  #mark(row) {
    this.#unmark();
    const line = h('div', {
      class: 'new-line', 'data-testid': 'new-line', role: 'separator', 'aria-label': 'New messages',
    }, h('span', { 'aria-hidden': 'true' }, 'New messages'));
    const first = row.firstElementChild;
    if (first?.classList.contains('day-divider')) first.after(line);
    else row.prepend(line);
    row.dataset.newLine = 'true';
    regroup(row);
    this.#row = row;
  }

  #unmark() {
    const row = this.#row;
    if (!row) return;
    this.#row = null;
    row.querySelector('.new-line')?.remove();
    delete row.dataset.newLine;
    regroup(row);
  }
}
