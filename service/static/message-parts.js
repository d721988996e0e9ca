// The v2 parts of a message row (see messageRow in render.js): the quote of the message it
// answers, the body or the tombstone, the "edited" marker, the reactions, and the tools
// (react, reply, the menu). Filled from the local copy of the message every time that copy
// changes; reaction buttons are updated in place, so the one a keyboard user just pressed
// keeps the focus.

import { mentions } from './mentions.js';
import { formatDateTime, h, icon, richText } from './render.js';

/** The quick row of the reaction picker. */
export const QUICK_EMOJI = ['👍', '❤️', '😂', '🎉', '😮', '😢', '👀', '🙏'];

export const TOMBSTONE_TEXT = 'This message was deleted';

/** PROTOCOL.md's Emoji: 1 to `max_emoji_chars` code points; no Cc, Cs, Zs, Zl, Zp, no Cf but
 * U+200D; no "/". */
const NOT_IN_EMOJI = /[\p{Cc}\p{Cs}\p{Zs}\p{Zl}\p{Zp}/]|(?!\u200D)\p{Cf}/u;

/** Why `text` cannot be a reaction, or '' when it can; `max` (code points) null when unknown. */
export function refusesEmoji(text, max) {
  const n = [...text].length;
  if (n === 0) return 'Type an emoji.';
  if (max != null && n > max) return `A reaction has at most ${max} characters.`;
  if (NOT_IN_EMOJI.test(text)) return 'A reaction cannot contain spaces, "/" or invisible characters.';
  return '';
}

/** The first line of a body, at most `max` characters, for quotes and confirmations. */
export function excerpt(body, max = 120) {
  const line = String(body ?? '').split('\n').find((l) => l.trim()) ?? '';
  const chars = [...line.trim()];
  return chars.length > max ? `${chars.slice(0, max - 1).join('')}…` : chars.join('');
}

/** How a quote names its original: loaded, deleted, or not (yet) known to the page. */
function quoteContent(original) {
  if (original == null) return [h('span', { class: 'quote-text' }, 'an earlier message')];
  if (original.deleted) {
    return [h('span', { class: 'quote-author' }, original.author), ': ',
      h('span', { class: 'quote-text is-deleted' }, TOMBSTONE_TEXT)];
  }
  return [h('span', { class: 'quote-author' }, original.author), ': ',
    h('span', { class: 'quote-text' }, excerpt(original.body))];
}

/** The quote above a reply: a button that shows the original (loading history if needed). */
export function quoteButton(seq, original) {
  return h('button', {
    type: 'button', class: 'msg-quote', 'data-action': 'jump', 'data-target': seq,
    'data-testid': 'reply-quote',
  },
  icon('reply', 'icon quote-icon'),
  h('span', { class: 'visually-hidden' }, 'In reply to '),
  quoteContent(original));
}

/** Refresh a quote (or the composer's) when its original arrives or changes. */
export function fillQuote(el, original) {
  const keep = [...el.childNodes].slice(0, 2); // the icon and "In reply to"
  el.replaceChildren(...keep, ...quoteContent(original));
}

function reactionButton({ emoji }) {
  return h('button', {
    type: 'button', class: 'reaction', 'data-action': 'react-toggle', 'data-emoji': emoji,
    'data-testid': 'reaction',
  }, h('span', { class: 'reaction-emoji' }, emoji), h('span', { class: 'reaction-count' }));
}

function updateReaction(button, { emoji, count, me }) {
  button.querySelector('.reaction-count').textContent = String(count);
  button.setAttribute('aria-pressed', String(me === true));
  button.dataset.count = String(count);
  const others = count - (me ? 1 : 0);
  button.title = me
    ? `You${others ? ` and ${others} other${others === 1 ? '' : 's'}` : ''} reacted with ${emoji}`
    : `${count} reacted with ${emoji}`;
}

function fillReactions(group, reactions, canReact) {
  const old = new Map([...group.querySelectorAll('.reaction')].map((b) => [b.dataset.emoji, b]));
  const wanted = reactions.map((r) => {
    const button = old.get(r.emoji) ?? reactionButton(r);
    old.delete(r.emoji);
    updateReaction(button, r);
    return button;
  });
  for (const gone of old.values()) gone.remove();
  let add = group.querySelector('.reaction-add');
  if (!add) {
    add = h('button', {
      type: 'button', class: 'reaction-add', 'data-action': 'react-open',
      'data-testid': 'reaction-add', 'aria-label': 'Add reaction', 'aria-haspopup': 'dialog',
    }, icon('smile'), h('span', { 'aria-hidden': 'true' }, '+'));
  }
  // Moving a node blurs it: only move what is out of order.
  const order = [...wanted, add];
  order.forEach((node, i) => {
    if (group.children[i] !== node) group.insertBefore(node, group.children[i] ?? null);
  });
  add.hidden = !canReact;
  group.hidden = reactions.length === 0;
}

function tools(msg) {
  return [
    h('button', {
      type: 'button', class: 'tool-btn', 'data-action': 'react-open', 'data-testid': 'message-react',
      'aria-label': 'Add reaction', 'aria-haspopup': 'dialog', title: 'Add reaction',
    }, icon('smile')),
    h('button', {
      type: 'button', class: 'tool-btn', 'data-action': 'reply', 'data-testid': 'message-reply',
      'aria-label': `Reply to ${msg.author}`, title: 'Reply',
    }, icon('reply')),
    h('button', {
      type: 'button', class: 'tool-btn', 'data-action': 'menu', 'data-testid': 'message-menu',
      'aria-label': 'More actions', 'aria-haspopup': 'menu', 'aria-expanded': 'false', title: 'More',
    }, icon('dots')),
  ];
}

/**
 * Show `msg` (the local copy, in its current state) in `row`.
 * @param {HTMLElement} row built by messageRow
 * @param {object} msg {seq, author, body, reply_to, edited_at, deleted, reactions, version}
 * @param {{original(seq: number): object|null, confirmed: boolean, me: string}} ctx
 */
export function fillRow(row, msg, { original, confirmed, me }) {
  row.dataset.version = String(msg.version ?? msg.seq ?? '');
  row.dataset.deleted = String(msg.deleted === true);
  row.dataset.edited = String(msg.edited_at != null && !msg.deleted);
  // A message of someone else that names you stands out (PROTOCOL.md's mention rule).
  row.classList.toggle('is-mention', msg.author !== me && !msg.deleted && mentions(msg.body, me));
  if (msg.reply_to != null) row.dataset.replyTo = String(msg.reply_to);

  const slot = row.querySelector('.msg-quote-slot');
  if (msg.reply_to == null) slot.replaceChildren();
  else if (slot.firstElementChild) fillQuote(slot.firstElementChild, original(msg.reply_to));
  else slot.append(quoteButton(msg.reply_to, original(msg.reply_to)));

  const body = row.querySelector('.msg-body');
  if (msg.deleted) {
    body.replaceChildren(TOMBSTONE_TEXT);
    body.classList.add('is-tombstone');
  } else if (body.dataset.shown !== msg.body) {
    body.replaceChildren(richText(msg.body ?? '', me));
    body.classList.remove('is-tombstone');
  }
  body.dataset.shown = msg.deleted ? '' : msg.body ?? '';

  const edited = row.querySelector('.msg-edited');
  edited.hidden = msg.edited_at == null || msg.deleted === true;
  if (!edited.hidden) {
    edited.textContent = '(edited)';
    edited.title = `Edited ${formatDateTime(msg.edited_at)}`;
  }

  const live = confirmed && !msg.deleted;
  fillReactions(row.querySelector('.msg-reactions'), msg.deleted ? [] : msg.reactions ?? [], live);
  const box = row.querySelector('.msg-tools');
  if (live && !box.firstElementChild) box.append(...tools(msg));
  if (!live) box.replaceChildren();
  box.hidden = !live;
}
