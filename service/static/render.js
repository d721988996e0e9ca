// DOM builders and formatting.
//
// Every piece of text that came from a user or the server goes into the page as a text node
// (through `h`), never through innerHTML, so a body like `<img src=x onerror=alert(1)>` is shown
// literally. The server's CSP forbids inline scripts and style attributes, so all looks come
// from classes in style.css.

/** Consecutive messages by one author closer than this share one header. */
import { mentionRanges } from './mentions.js';

const GROUP_WINDOW_MS = 5 * 60 * 1000;
const AVATAR_COLOURS = 8;

/**
 * `h('li', {class: 'x', 'data-seq': 3}, child, 'text', [more])`. Strings become text nodes;
 * null/false props and children are skipped.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    // The CSP would block these anyway; refusing them here makes such a mistake loud in dev.
    if (/^on/i.test(key) || key === 'style') throw new Error(`h(): refusing attribute "${key}"`);
    if (key === 'class') el.className = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  el.append(...children.flat(Infinity).filter((c) => c != null && c !== false)
    .map((c) => (c instanceof Node ? c : String(c))));
  return el;
}

/** Path data of the small icons drawn in the page (24x24, stroked). */
const ICONS = {
  lock: 'M7 11V8a5 5 0 0 1 10 0v3M6 11h12v9H6z',
  at: 'M16 12a4 4 0 1 1-8 0a4 4 0 0 1 8 0zm0 0v1.5a2.5 2.5 0 0 0 5 0V12a9 9 0 1 0-3.5 7.1',
  hash: 'M5 9h14M5 15h14M10 4L8 20M16 4l-2 16',
  reply: 'M10 8V4l-7 7l7 7v-4.1c5 0 8.5 1.6 11 5.1c-1-5-4-10-11-11z',
  smile: 'M12 21a9 9 0 1 0 0-18a9 9 0 0 0 0 18zM8.5 14.5a4.5 4.5 0 0 0 7 0M9 9.5h.01M15 9.5h.01',
  dots: 'M5 12h.01M12 12h.01M19 12h.01',
};

/** An inline SVG icon (hidden from assistive technology: the text next to it says it). */
export function icon(name, className = 'icon') {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('class', className);
  const path = document.createElementNS(ns, 'path');
  path.setAttribute('d', ICONS[name] ?? ICONS.hash);
  svg.append(path);
  return svg;
}

/** The icon of a room kind: # public, a lock private, @ dm. */
export const kindIcon = (kind) => icon(kind === 'private' ? 'lock' : kind === 'dm' ? 'at' : 'hash', 'icon kind-icon');

/** What a room is called on screen: a dm by the other person's name. */
export const roomLabel = (name, info) => (info?.kind === 'dm' && info.peer ? info.peer : name);

/** Words for a kind, for screen readers and titles. */
export const KIND_TEXT = { public: 'Public room', private: 'Private room', dm: 'Direct message' };

// ---------------------------------------------------------------------------------------------
// Time

const fmtTime = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' });
const fmtFull = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'short' });
const fmtDay = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric' });
const fmtDayYear = new Intl.DateTimeFormat(undefined, { year: 'numeric', month: 'long', day: 'numeric' });
const fmtWeekday = new Intl.DateTimeFormat(undefined, { weekday: 'short' });
const fmtShortDate = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });

/** A Date for an ISO string; "now" for a missing or unparsable one (e.g. a pending message). */
export function parseDate(iso) {
  const date = iso ? new Date(iso) : new Date();
  return Number.isNaN(date.getTime()) ? new Date() : date;
}

const startOfDay = (d) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();

export function dayLabel(date, now = new Date()) {
  // Rounding absorbs the 23/25-hour days around DST changes.
  const days = Math.round((startOfDay(now) - startOfDay(date)) / 86_400_000);
  if (days === 0) return 'Today';
  if (days === 1) return 'Yesterday';
  return date.getFullYear() === now.getFullYear() ? fmtDay.format(date) : fmtDayYear.format(date);
}

/** Compact activity stamp for the room list: now, 5m, 3h, Tue, Nov 3. */
export function relativeTime(date, now = new Date()) {
  const seconds = (now.getTime() - date.getTime()) / 1000;
  if (seconds < 60) return 'now'; // also absorbs a server clock slightly ahead of ours
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 86_400) return `${Math.floor(seconds / 3600)}h`;
  if (seconds < 6 * 86_400) return fmtWeekday.format(date);
  return fmtShortDate.format(date);
}

function timeEl(date, className) {
  return h('time', { class: className, datetime: date.toISOString(), title: fmtFull.format(date) },
    fmtTime.format(date));
}

function setTime(el, date) {
  el.dateTime = date.toISOString();
  el.title = fmtFull.format(date);
  el.textContent = fmtTime.format(date);
}

// ---------------------------------------------------------------------------------------------
// People

/** A stable colour per user, so a name is recognisable at a glance across rooms and reloads. */
export function avatarClass(name) {
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `avatar av-${hash % AVATAR_COLOURS}`;
}

export function avatar(name) {
  const initial = (name.match(/[a-z0-9]/i)?.[0] ?? '?').toUpperCase();
  return h('span', { class: avatarClass(name), 'aria-hidden': 'true' }, initial);
}

/**
 * A username shown in the page (an author, the online list, a room's members). Anyone else's
 * is a button that opens the dm with them (the session listens for clicks on `data-dm`); the
 * user's own stays text, as there is no dm with oneself.
 */
export function userName(name, me, className) {
  if (name === me) return h('span', { class: className }, name);
  return h('button', {
    type: 'button', class: `${className} user-btn`, 'data-dm': name, 'data-testid': 'user-dm',
    'aria-label': `${name}: send a message`, title: `Send ${name} a message`,
  }, name);
}

export function onlineItem(name, me) {
  return h('li', { class: name === me ? 'online-user is-me' : 'online-user', 'data-testid': 'online-user' },
    h('span', { class: 'presence-dot', 'aria-hidden': 'true' }),
    userName(name, me, 'online-name'));
}

export function typingText(users) {
  const [a, b, c] = users;
  switch (users.length) {
    case 0: return '';
    case 1: return `${a} is typing…`;
    case 2: return `${a} and ${b} are typing…`;
    case 3: return `${a}, ${b} and ${c} are typing…`;
    default: return 'Several people are typing…';
  }
}

// ---------------------------------------------------------------------------------------------
// Messages

const URL_RE = /\bhttps?:\/\/[^\s<>"']+/gi;

/**
 * The body as text nodes, with http(s) URLs turned into links and mentions of `me` (PROTOCOL's
 * rule, mentions.js) marked. Links are built from parsed URLs, so nothing but http: and https:
 * can ever become an href.
 */
export function richText(body, me = null) {
  const frag = document.createDocumentFragment();
  let last = 0;
  for (const match of body.matchAll(URL_RE)) {
    let url = match[0];
    // Trailing punctuation is almost always prose ("see https://x.org."); a closing paren
    // belongs to the URL only when it opened one inside it (Wikipedia-style links).
    url = url.replace(/[.,;:!?'"\]}]+$/, '');
    while (url.endsWith(')') && (url.match(/\(/g)?.length ?? 0) < (url.match(/\)/g)?.length ?? 0)) {
      url = url.slice(0, -1).replace(/[.,;:!?'"\]}]+$/, '');
    }
    let href;
    try {
      href = new URL(url);
    } catch {
      continue;
    }
    if (href.protocol !== 'http:' && href.protocol !== 'https:') continue;
    appendText(frag, body.slice(last, match.index), me);
    frag.append(h('a', { href: href.href, target: '_blank', rel: 'noopener noreferrer nofollow' }, url));
    last = match.index + url.length;
  }
  appendText(frag, body.slice(last), me);
  return frag;
}

/** Plain text, with each mention of `me` in a <mark>. */
function appendText(frag, text, me) {
  let last = 0;
  for (const [start, end] of mentionRanges(text, me)) {
    frag.append(text.slice(last, start),
      h('mark', { class: 'mention', 'data-testid': 'mention' }, text.slice(start, end)));
    last = end;
  }
  frag.append(text.slice(last));
}

/** One message row. `msg.seq` is null for a pending (not yet acknowledged) message. Its v2
 * parts (quote, edited, tombstone, reactions, tools) are filled by message-parts.js. */
export function messageRow(msg, { state = 'confirmed', me = null } = {}) {
  const date = parseDate(msg.created_at);
  return h('li', {
    class: msg.author === me ? 'msg is-own' : 'msg',
    'data-testid': 'message',
    'data-seq': msg.seq ?? '',
    'data-client-id': msg.client_id ?? '',
    'data-state': state,
    'data-author': msg.author,
    'data-ts': date.getTime(),
  },
  h('div', { class: 'msg-line' },
    h('div', { class: 'msg-gutter' }, avatar(msg.author), timeEl(date, 'msg-hover-time')),
    h('div', { class: 'msg-main' },
      h('div', { class: 'msg-meta' },
        userName(msg.author, me, 'msg-author'), timeEl(date, 'msg-time')),
      h('div', { class: 'msg-quote-slot' }),
      h('div', { class: 'msg-text' },
        h('span', { class: 'msg-body', 'data-testid': 'message-body' }, richText(msg.body, me)),
        h('span', { class: 'msg-edited', 'data-testid': 'message-edited', hidden: true })),
      h('div', { class: 'msg-reactions', role: 'group', 'aria-label': 'Reactions', hidden: true }),
      h('div', { class: 'msg-status' })),
    h('div', { class: 'msg-tools', hidden: true })));
}

const ROLE_WITH_ARTICLE = { owner: 'an owner', moderator: 'a moderator', member: 'a member' };

/** The words of a private room's `member` event: "alice added bob", "bob left", ... */
export function memberEventText({ user, event, role, by }) {
  switch (event) {
    case 'added':
      if (by === user) return `${user} joined`;
      return role && role !== 'member' ? `${by} added ${user} as ${role}` : `${by} added ${user}`;
    case 'left': return `${user} left`;
    case 'removed': return by && by !== user ? `${by} removed ${user}` : `${user} was removed`;
    case 'role': return `${user} is now ${ROLE_WITH_ARTICLE[role] ?? role}`;
    default: return `${user}: ${event}`;
  }
}

/**
 * A system line in a room's log (a `member` event), in seq order among the messages. Member
 * events carry no time: `at` is when the page learnt of it (live, that is when it happened),
 * and only places the line under its day.
 */
export function systemRow(frame, at = Date.now()) {
  return h('li', {
    class: 'sys-line',
    'data-testid': 'system-line',
    'data-seq': frame.seq,
    'data-system': 'true',
    'data-ts': at,
  }, h('span', { class: 'sys-text', 'data-testid': 'system-text' }, memberEventText(frame)));
}

/** Pending → confirmed in place: the row keeps its DOM node, so focus and selection survive. */
export function confirmRow(row, { seq, created_at: createdAt }) {
  const date = parseDate(createdAt);
  row.dataset.seq = String(seq);
  row.dataset.ts = String(date.getTime());
  for (const el of row.querySelectorAll('.msg-time, .msg-hover-time')) setTime(el, date);
  setRowState(row, 'confirmed');
}

export function setRowState(row, state, error = '') {
  row.dataset.state = state;
  const status = row.querySelector('.msg-status');
  if (state !== 'failed') {
    status.replaceChildren();
    return;
  }
  status.replaceChildren(
    h('span', { class: 'msg-error', 'data-testid': 'message-error' }, error || 'Not delivered.'),
    h('button', { type: 'button', class: 'link-btn', 'data-action': 'retry', 'data-testid': 'message-retry' }, 'Retry'),
    h('button', { type: 'button', class: 'link-btn', 'data-action': 'discard', 'data-testid': 'message-discard' }, 'Discard'));
}

const dayKey = (ms) => startOfDay(new Date(ms));

/**
 * Decide, from its predecessor, whether `row` opens a new day (divider) and whether it
 * continues the previous author's group (header hidden). Only the row and its next sibling
 * can change when a row is inserted, so callers regroup just those.
 */
export function regroup(row) {
  if (!row) return;
  const prev = row.previousElementSibling;
  const ts = Number(row.dataset.ts);
  const prevTs = prev ? Number(prev.dataset.ts) : NaN;
  const newDay = !prev || dayKey(ts) !== dayKey(prevTs);
  // A system line never joins a group, and breaks the one it sits in; so does the line
  // that marks where the new messages begin.
  const continues = !newDay && !row.dataset.system && !prev.dataset.system && !row.dataset.newLine
    && prev.dataset.author === row.dataset.author
    && Math.abs(ts - prevTs) < GROUP_WINDOW_MS;
  row.classList.toggle('is-cont', continues);

  const first = row.firstElementChild;
  const divider = first?.classList.contains('day-divider') ? first : null;
  if (newDay) {
    const label = dayLabel(new Date(ts));
    if (divider) divider.firstElementChild.textContent = label;
    else row.prepend(h('div', { class: 'day-divider', role: 'separator' }, h('span', {}, label)));
  } else {
    divider?.remove();
  }
}

/** A spinner or a retry at one end of the loaded history, or null. `side`: 'earlier' or
 * 'later'; the retry button's action is load-older or load-newer. */
function historyStatus(side, { loading, error }) {
  if (loading) {
    return h('div', { class: 'history-loading', role: 'status' },
      h('span', { class: 'spinner', 'aria-hidden': 'true' }), `Loading ${side} messages…`);
  }
  if (error) {
    const older = side === 'earlier';
    return h('div', { class: 'history-error', role: 'alert' },
      `Couldn't load ${side} messages: ${error}`, ' ',
      h('button', {
        type: 'button', class: 'link-btn', 'data-action': older ? 'load-older' : 'load-newer',
        'data-testid': older ? 'history-retry' : 'history-newer-retry',
      }, 'Try again'));
  }
  return null;
}

/** What sits above the oldest loaded message: a spinner, a retry, or the start of the room
 * (`room` as the page names it: "#general", "your conversation with bob"). */
export function historyTop(room, { loading, error, hasMore }) {
  const status = historyStatus('earlier', { loading, error });
  if (status) return status;
  if (hasMore === false) {
    return h('div', { class: 'history-start', 'data-testid': 'history-start' },
      h('span', { class: 'history-start-icon', 'aria-hidden': 'true' }, '#'),
      h('p', { class: 'history-start-title' }, `This is the beginning of ${room}`),
      h('p', { class: 'history-start-sub' }, 'Every message ever sent here is above this line — there is nothing older.'));
  }
  return null;
}

/** What sits below the newest loaded message while later ones are not loaded (the view
 * dropped them to stay bounded): a spinner or a retry, or null. */
export const historyBottom = (state) => historyStatus('later', state);

// ---------------------------------------------------------------------------------------------
// Room list

export function roomItem(name) {
  const badge = (testid, className) => h('span', { class: className, 'data-testid': testid, hidden: true },
    h('span', { 'aria-hidden': 'true' }), h('span', { class: 'visually-hidden' }));
  return h('li', { class: 'room' },
    h('button', { type: 'button', class: 'room-item', 'data-testid': 'room-item', 'data-room': name },
      h('span', { class: 'room-kind' }, kindIcon('public')),
      h('span', { class: 'room-name' }, name),
      badge('room-unread', 'room-badge'),
      badge('room-mentions', 'room-badge is-mention'),
      h('time', { class: 'room-time' })));
}

/** A count badge of a room item: `shown` on screen ("@2", "99+"), `words` for screen readers
 * (", 2 unread messages"; the badge's own text is hidden from them). */
function setBadge(badge, count, shown, words) {
  badge.hidden = !(count > 0);
  badge.dataset.count = String(count > 0 ? count : 0);
  badge.firstElementChild.textContent = shown;
  badge.lastElementChild.textContent = words;
}

const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;
const capped = (n) => (n > 99 ? '99+' : String(n));

/** Refresh an item built by roomItem() in place (cheaper than rebuilding, keeps focus). */
export function updateRoomItem(li, {
  name, kind, peer, active, unread, mentions, activity, now,
}) {
  const button = li.firstElementChild;
  const time = button.querySelector('.room-time');
  const kindEl = button.querySelector('.room-kind');
  const shownKind = kind ?? 'public';
  if (button.dataset.kind !== shownKind) {
    button.dataset.kind = shownKind;
    kindEl.replaceChildren(kindIcon(shownKind),
      h('span', { class: 'visually-hidden' }, `${KIND_TEXT[shownKind] ?? 'Room'}: `));
  }
  const label = roomLabel(name, { kind, peer });
  const nameEl = button.querySelector('.room-name');
  if (nameEl.textContent !== label) nameEl.textContent = label;
  if (peer) button.dataset.peer = peer;
  if (active) button.setAttribute('aria-current', 'page');
  else button.removeAttribute('aria-current');
  button.dataset.unread = String(unread > 0);
  // Every message of a dm mentions its reader: there the one badge is the mention badge.
  const dm = kind === 'dm';
  setBadge(button.querySelector('[data-testid="room-mentions"]'), dm ? unread : mentions,
    dm ? capped(unread) : `@${capped(mentions)}`,
    `, ${dm ? plural(unread, 'unread message', 'unread messages') : plural(mentions, 'mention', 'mentions')}`);
  setBadge(button.querySelector('[data-testid="room-unread"]'), dm ? 0 : unread, capped(unread),
    `, ${plural(unread, 'unread message', 'unread messages')}`);
  if (activity) {
    time.dateTime = activity.toISOString();
    time.title = `Last activity ${fmtFull.format(activity)}`;
    time.textContent = relativeTime(activity, now);
  } else {
    time.textContent = '';
  }
}

/** A date and time for lists (sessions, public rooms): "12 Mar 2026, 14:05". */
export const formatDateTime = (iso) => (iso ? fmtFull.format(parseDate(iso)) : '—');
