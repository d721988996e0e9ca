// "Public rooms" (GET /api/rooms/public?q=): every public room by name, narrowed by a name
// prefix as you type, a page at a time. Opening one joins it.

import * as api from './api.js';
import { PagedSearch } from './paged-search.js';
import { h, kindIcon, relativeTime, parseDate } from './render.js';

const SEARCH_AFTER_MS = 200;
const PAGE = 50;

export class BrowseDialog extends PagedSearch {
  /**
   * @param {{onOpen(room: string): void, isMine(room: string): boolean}} hooks
   * @param {AbortSignal} signal
   */
  constructor(hooks, signal) {
    super('browse', SEARCH_AFTER_MS, signal);
    this.hooks = hooks;
  }

  open() {
    this.q.value = '';
    this.modal.open(this.q);
    this.search();
  }

  query() {
    return this.q.value.trim().replace(/^#/, '').toLowerCase();
  }

  refuse(q) {
    return q && !/^[a-z0-9_-]*$/.test(q) ? `No room name starts with “${q}”.` : '';
  }

  async fetch(q, cursor) {
    const page = await api.publicRooms(q, cursor, PAGE);
    return {
      items: (page?.rooms ?? []).map((room) => this.#item(room)),
      cursor: page?.next_cursor ?? null,
    };
  }

  failed(err) {
    return `Could not load public rooms: ${err.message}`;
  }

  summary(shown, q, more) {
    return shown === 0
      ? (q ? `No public room starts with “${q}”.` : 'There are no public rooms yet.')
      : `${shown} public room${shown === 1 ? '' : 's'}${q ? ` starting with “${q}”` : ''}${more ? ' (more below)' : ''}.`;
  }

  pick(button) {
    this.hooks.onOpen(button.dataset.room);
  }

  #item(room) {
    const at = room.last_message_at ?? room.created_at;
    const mine = this.hooks.isMine(room.name);
    const members = `${room.members} member${room.members === 1 ? '' : 's'}`;
    const activity = at ? `active ${relativeTime(parseDate(at))}` : '';
    return h('li', { class: 'listed', 'data-testid': 'public-room', 'data-room': room.name },
      h('span', { class: 'listed-icon' }, kindIcon('public')),
      h('span', { class: 'listed-main' },
        h('span', { class: 'listed-name' }, room.name),
        h('span', { class: 'listed-meta' }, [members, activity].filter(Boolean).join(' · '))),
      h('button', {
        type: 'button', class: 'btn btn-secondary btn-small', 'data-room': room.name,
        'data-testid': 'public-room-open', 'aria-label': `${mine ? 'Open' : 'Join'} ${room.name}`,
      }, mine ? 'Open' : 'Join'));
  }
}
