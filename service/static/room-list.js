// The sidebar's room lists: the user's rooms from GET /api/rooms, kept current by the user's
// own stream (`rooms` frames: the page re-reads GET /api/rooms/{room}) and by what the
// socket reports live, ordered by latest activity, with unread counts. Rooms (public and
// private) and direct messages are two lists; a dm shows the other person's name.
//
// "Read up to seq N" is kept per user in localStorage, so unread counts survive a reload and
// show for rooms that are not even joined in this tab (their last_seq comes from the REST
// list). A room never opened in this browser has no read mark and shows no count, rather than
// flagging its whole history as unread.

import { roomItem, updateRoomItem } from './render.js';

export class RoomList {
  /** name → {name, kind, role, peer, last_seq, created_at, last_message_at} */
  #rooms = new Map();
  /** name → <li> */
  #items = new Map();
  #read;
  #readKey;
  #active = null;
  #lists;
  #empties;
  #queued = false;

  /**
   * @param {{rooms: HTMLElement, dms: HTMLElement}} lists the two <ul>s
   * @param {{rooms: HTMLElement, dms: HTMLElement}} empties what each shows when empty
   */
  constructor(lists, empties, me, onSelect, signal) {
    this.#lists = lists;
    this.#empties = empties;
    this.#readKey = `chat.read.${me}`;
    this.#read = loadJson(this.#readKey);
    for (const list of Object.values(lists)) {
      list.addEventListener('click', (event) => {
        const button = event.target.closest('[data-testid="room-item"]');
        if (button) onSelect(button.dataset.room);
      }, { signal });
    }
  }

  /** What the list knows of a room ({kind, role, peer, ...}), or undefined. */
  get(name) {
    return this.#rooms.get(name);
  }

  has(name) {
    return this.#rooms.has(name);
  }

  /** Fold in rooms of a GET /api/rooms answer (or one GET /api/rooms/{room}); never moves a
   * room's counters backwards. */
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
      if ('kind' in room) known.kind = room.kind;
      if ('role' in room) known.role = room.role;
      if ('peer' in room) known.peer = room.peer;
      if (ms(room.last_message_at) > ms(known.last_message_at)) known.last_message_at = room.last_message_at;
    }
    this.render();
  }

  /** The whole list as the server has it now: rooms missing from `rooms` go, except those in
   * `keep` (rooms this tab has open, whose fate their join decides). */
  replace(rooms, keep = new Set()) {
    const listed = new Set((rooms ?? []).map((r) => r?.name));
    for (const name of [...this.#rooms.keys()]) {
      if (!listed.has(name) && !keep.has(name)) this.remove(name);
    }
    this.merge(rooms);
  }

  /** The user is no longer a member: the room leaves the list. */
  remove(name) {
    if (!this.#rooms.delete(name)) return;
    this.#items.get(name)?.remove();
    this.#items.delete(name);
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

  /** What a `joined` frame says of the room (v2: its kind and the user's role). */
  joined(name, { kind, role }) {
    const room = this.#rooms.get(name);
    if (!room) return;
    if (kind) room.kind = kind;
    if (role !== undefined) room.role = role;
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
    const previous = { rooms: null, dms: null };
    const counts = { rooms: 0, dms: 0 };
    for (const room of sorted) {
      const which = room.kind === 'dm' ? 'dms' : 'rooms';
      const list = this.#lists[which];
      let li = this.#items.get(room.name);
      if (!li) {
        li = roomItem(room.name);
        this.#items.set(room.name, li);
      }
      const at = activityMs(room);
      updateRoomItem(li, {
        name: room.name,
        kind: room.kind,
        peer: room.peer,
        active: room.name === this.#active,
        unread: this.#unread(room),
        activity: at ? new Date(at) : null,
        now,
      });
      // Move only what is out of place: moving a node blurs it, and this runs often.
      const before = previous[which];
      const expected = before ? before.nextElementSibling : list.firstElementChild;
      if (expected !== li) {
        if (before) before.after(li);
        else list.prepend(li);
      }
      previous[which] = li;
      counts[which] += 1;
    }
    this.#empties.rooms.hidden = counts.rooms > 0;
    this.#empties.dms.hidden = counts.dms > 0;
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
