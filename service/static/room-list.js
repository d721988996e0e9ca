// The sidebar's room list: rooms from GET /api/rooms merged with what the socket reports live,
// ordered by latest activity, with unread counts.
//
// "Read up to seq N" is kept per user in localStorage, so unread counts survive a reload and
// show for rooms that are not even joined in this tab (their last_seq comes from the REST
// list). A room never opened in this browser has no read mark and shows no count, rather than
// flagging its whole history as unread.

import { roomItem, updateRoomItem } from './render.js';

export class RoomList {
  /** name → {name, last_seq, created_at, last_message_at} */
  #rooms = new Map();
  /** name → <li> */
  #items = new Map();
  #read;
  #readKey;
  #active = null;
  #list;
  #empty;
  #queued = false;

  constructor(listEl, emptyEl, me, onSelect, signal) {
    this.#list = listEl;
    this.#empty = emptyEl;
    this.#readKey = `chat.read.${me}`;
    this.#read = loadJson(this.#readKey);
    listEl.addEventListener('click', (event) => {
      const button = event.target.closest('[data-testid="room-item"]');
      if (button) onSelect(button.dataset.room);
    }, { signal });
  }

  /** Fold in a GET /api/rooms answer; never moves a room's counters backwards. */
  merge(rooms) {
    for (const room of rooms ?? []) {
      if (typeof room?.name !== 'string') continue;
      const known = this.#rooms.get(room.name);
      if (!known) {
        this.#rooms.set(room.name, { ...room, last_seq: room.last_seq ?? 0 });
        continue;
      }
      known.last_seq = Math.max(known.last_seq, room.last_seq ?? 0);
      known.created_at ??= room.created_at;
      if (ms(room.last_message_at) > ms(known.last_message_at)) known.last_message_at = room.last_message_at;
    }
    this.render();
  }

  /** Make sure a room shows (one just joined by name may have no row on the server yet). */
  ensure(name) {
    if (this.#rooms.has(name)) return;
    this.#rooms.set(name, {
      name, last_seq: 0, created_at: new Date().toISOString(), last_message_at: null,
    });
    this.render();
  }

  /** A message (or a joined's last_seq, with `at` null) seen on the socket. */
  activity(name, seq, at) {
    this.ensure(name);
    const room = this.#rooms.get(name);
    room.last_seq = Math.max(room.last_seq, seq ?? 0);
    if (at && ms(at) > ms(room.last_message_at)) room.last_message_at = at;
    this.render();
  }

  setActive(name) {
    this.#active = name;
    this.render();
  }

  readSeq(name) {
    return this.#read[name];
  }

  markRead(name, seq) {
    if (!(seq > (this.#read[name] ?? -1))) return;
    this.#read[name] = seq;
    saveJson(this.#readKey, this.#read);
    this.render();
  }

  /** Sum of unread counts, for the tab title. */
  totalUnread() {
    let total = 0;
    for (const room of this.#rooms.values()) total += this.#unread(room);
    return total;
  }

  /** Coalesce the many updates of a replay burst into one DOM pass. */
  render() {
    if (this.#queued) return;
    this.#queued = true;
    queueMicrotask(() => {
      this.#queued = false;
      this.#renderNow();
    });
  }

  #unread(room) {
    const read = this.#read[room.name];
    if (read == null || room.name === this.#active) return 0;
    return Math.max(0, room.last_seq - read);
  }

  #renderNow() {
    const now = new Date();
    const sorted = [...this.#rooms.values()].sort((a, b) =>
      activityMs(b) - activityMs(a) || a.name.localeCompare(b.name));
    let previous = null;
    for (const room of sorted) {
      let li = this.#items.get(room.name);
      if (!li) {
        li = roomItem(room.name);
        this.#items.set(room.name, li);
      }
      const at = activityMs(room);
      updateRoomItem(li, {
        active: room.name === this.#active,
        unread: this.#unread(room),
        activity: at ? new Date(at) : null,
        now,
      });
      // Move only what is out of place: moving a node blurs it, and this runs often.
      const expected = previous ? previous.nextElementSibling : this.#list.firstElementChild;
      if (expected !== li) {
        if (previous) previous.after(li);
        else this.#list.prepend(li);
      }
      previous = li;
    }
    this.#empty.hidden = this.#rooms.size > 0;
  }
}

function ms(iso) {
  const t = iso ? Date.parse(iso) : NaN;
  return Number.isNaN(t) ? 0 : t;
}

const activityMs = (room) => ms(room.last_message_at) || ms(room.created_at);

function loadJson(key) {
  try {
    const value = JSON.parse(localStorage.getItem(key) ?? '{}');
    return value && typeof value === 'object' ? value : {};
  } catch {
    return {}; // storage disabled or corrupt: unread marks simply start afresh
  }
}

function saveJson(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // quota or privacy mode: unread marks then last for this page only
  }
}
