// The sidebar's room lists: the user's rooms from GET /api/rooms, kept current by the user's
// own stream (`rooms` frames: the page re-reads GET /api/rooms/{room}) and by what the
// socket reports live, ordered by latest activity, with unread and mention badges. Rooms
// (public and private) and direct messages are two lists; a dm shows the other person's name.
//
// The counts are the server's (`unread`, `mentions`, `last_read_seq` of GET /api/rooms and
// GET /api/rooms/{room}), exact when read. A `read` frame moves the cursor at once (and
// clears the counts when it reaches the newest message known); anything else is read again
// from the server. Answers may come back in any order: one is taken only if neither its
// cursor nor its log head is behind what the list holds (both only move forward).

import { roomItem, updateRoomItem } from './render.js';

export class RoomList {
  /** name → {name, kind, role, peer, last_seq, last_message_seq, created_at, last_message_at,
   * last_read_seq, unread, mentions, counted (the last_seq the counts are as of)} */
  #rooms = new Map();
  /** name → <li> */
  #items = new Map();
  #active = null;
  /** Whether the reader is looking at the active room (page visible and focused): its counts
   * are not news then (the cursor is about to move). */
  #attentive = true;
  #onChange;
  #lists;
  #empties;
  #queued = false;

  /**
   * @param {{rooms: HTMLElement, dms: HTMLElement}} lists the two <ul>s
   * @param {{rooms: HTMLElement, dms: HTMLElement}} empties what each shows when empty
   * @param {() => void} onChange after each render (the title follows the counts)
   */
  constructor(lists, empties, onSelect, onChange, signal) {
    this.#lists = lists;
    this.#empties = empties;
    this.#onChange = onChange;
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

  /** The name of the user's dm with `peer`, or null when the list has none. */
  dmWith(peer) {
    for (const room of this.#rooms.values()) {
      if (room.kind === 'dm' && room.peer === peer) return room.name;
    }
    return null;
  }

  /** Fold in rooms of a GET /api/rooms answer (or one GET /api/rooms/{room}); never moves a
   * room's counters backwards. */
  merge(rooms) {
    for (const room of rooms ?? []) {
      if (typeof room?.name !== 'string') continue;
      const known = this.#rooms.get(room.name);
      if (!known) {
        this.#rooms.set(room.name, {
          ...room, last_seq: room.last_seq ?? 0, last_message_seq: room.last_message_seq ?? 0,
          counted: hasCounts(room) ? room.last_seq ?? 0 : -1,
        });
        continue;
      }
      if (hasCounts(room) && room.last_read_seq >= (known.last_read_seq ?? -1)
        && (room.last_seq ?? 0) >= known.counted) {
        known.last_read_seq = room.last_read_seq;
        known.unread = room.unread;
        known.mentions = room.mentions ?? 0;
        known.counted = room.last_seq ?? 0;
      }
      known.last_seq = Math.max(known.last_seq, room.last_seq ?? 0);
      known.last_message_seq = Math.max(known.last_message_seq ?? 0, room.last_message_seq ?? 0);
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
      name, last_seq: 0, last_message_seq: 0, counted: -1,
      created_at: new Date().toISOString(), last_message_at: null,
    });
    this.render();
  }

  /** What a `joined` frame says of the room (v2: its kind, the user's role and cursor). */
  joined(name, { kind, role, last_read_seq: read, last_message_seq: lastMessage }) {
    const room = this.#rooms.get(name);
    if (!room) return;
    if (kind) room.kind = kind;
    if (role !== undefined) room.role = role;
    if (Number.isInteger(lastMessage)) room.last_message_seq = Math.max(room.last_message_seq, lastMessage);
    if (Number.isInteger(read)) this.read(name, read);
    this.render();
  }

  /** A message (`at`: its time), or another event (`at` null), seen on the socket. */
  activity(name, seq, at) {
    this.ensure(name);
    const room = this.#rooms.get(name);
    room.last_seq = Math.max(room.last_seq, seq ?? 0);
    if (at) room.last_message_seq = Math.max(room.last_message_seq, seq ?? 0);
    if (at && ms(at) > ms(room.last_message_at)) room.last_message_at = at;
    this.render();
  }

  /**
   * An `activity` frame (the user's stream): the room has new messages. True when its counts
   * must be read again (something after the cursor).
   */
  heard({ room: name, last_seq: seq, last_message_seq: lastMessage, last_message_at: at }) {
    const room = this.#rooms.get(name);
    if (!room) return false;
    this.activity(name, seq, null);
    room.last_message_seq = Math.max(room.last_message_seq, lastMessage ?? 0);
    if (ms(at) > ms(room.last_message_at)) room.last_message_at = at;
    return room.last_message_seq > (room.last_read_seq ?? -1);
  }

  /**
   * The read cursor moved to `seq` (a `read` frame from any tab, or a `joined`). True when
   * the counts must be read again: messages are known after the new cursor.
   */
  read(name, seq) {
    const room = this.#rooms.get(name);
    if (!room || !(seq > (room.last_read_seq ?? -1))) return false;
    room.last_read_seq = seq;
    this.render();
    if (seq < room.last_message_seq) return true;
    room.unread = 0;
    room.mentions = 0;
    return false;
  }

  setActive(name) {
    this.#active = name;
    this.render();
  }

  /** Whether the reader is looking at the page (visible and focused). */
  setAttentive(attentive) {
    if (attentive === this.#attentive) return;
    this.#attentive = attentive;
    this.render();
  }

  /** Sum of unread counts shown, for the tab title. */
  totalUnread() {
    let total = 0;
    for (const room of this.#rooms.values()) total += this.#shown(room).unread;
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

  /** The counts a room shows: none for the room being read, none before the server said. */
  #shown(room) {
    if (room.name === this.#active && this.#attentive) return { unread: 0, mentions: 0 };
    return { unread: room.unread ?? 0, mentions: room.mentions ?? 0 };
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
        ...this.#shown(room),
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
    this.#onChange();
  }
}

/** Whether a room of GET /api/rooms carries the user's counts (null: not a member). */
const hasCounts = (room) => Number.isInteger(room.last_read_seq) && Number.isInteger(room.unread);

function ms(iso) {
  const t = iso ? Date.parse(iso) : NaN;
  return Number.isNaN(t) ? 0 : t;
}

const activityMs = (room) => ms(room.last_message_at) || ms(room.created_at);
