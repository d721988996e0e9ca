// "Search messages" (GET /api/search?q=): the messages of the user's rooms that match, newest
// first, a page at a time, with the matched words marked. A result opens its room at that
// message (loaded `around` it when it is far back), highlighted.

import * as api from './api.js';
import * as config from './config.js';
import { PagedSearch } from './paged-search.js';
import {
  KIND_TEXT, formatDateTime, h, kindIcon, parseDate, relativeTime, roomLabel,
} from './render.js';

const SEARCH_AFTER_MS = 300;
const PAGE = 20;

// The server's folding (service/search_text.py), in spirit: accents of the combining
// diacritical blocks dropped, compatibility forms unified, case folded; words are runs of
// letters, digits and marks, split where a script written without spaces begins or ends.
const ACCENTS = /[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]/gu;
const SCRIPTS = [
  '\\u3005\\u3007\\u3400-\\u4dbf\\u4e00-\\u9fff\\uf900-\\ufaff\\u{20000}-\\u{3134f}', // Han
  '\\u3041-\\u3096\\u309d-\\u309f', // Hiragana
  '\\u30a1-\\u30fa\\u30fc-\\u30ff\\u31f0-\\u31ff', // Katakana
  '\\u0e01-\\u0e3a\\u0e40-\\u0e4e\\u0e50-\\u0e59', // Thai
];
const SPACELESS = SCRIPTS.join('');
const WORD = new RegExp(
  `${SCRIPTS.map((chars) => `[${chars}]+`).join('|')}|(?:(?![${SPACELESS}])[\\p{L}\\p{N}\\p{M}])+`, 'gu');
const IS_SPACELESS = new RegExp(`^[${SPACELESS}]`, 'u');

/** One code point (or any text) as the server folds it. */
export const fold = (text) => text.normalize('NFKD').replace(ACCENTS, '').normalize('NFC').toLowerCase()
  .replaceAll('ß', 'ss'); // as casefold() does

const kept = (word) => [...word].length > 1 || IS_SPACELESS.test(word);

/**
 * The terms of a query as the server reads them (service/search_text.py, parse_query), each
 * a list of folded words: a word alone, or a quoted phrase (a quote left open runs to the
 * end). Words of one character outside the spaceless scripts are ignored, as the server
 * ignores them; inside a phrase they keep their place, as null (any word).
 */
export function queryTerms(q) {
  const terms = [];
  q.split('"').forEach((part, i) => {
    const found = fold(part).match(WORD) ?? [];
    if (i % 2 && found.length > 1) {
      const phrase = found.map((w) => (kept(w) ? w : null));
      while (phrase.length > 0 && phrase[0] === null) phrase.shift();
      while (phrase.length > 0 && phrase.at(-1) === null) phrase.pop();
      if (phrase.length > 0) terms.push(phrase);
    } else {
      for (const w of found) if (kept(w)) terms.push([w]);
    }
  });
  return terms;
}

/**
 * Where `terms` (queryTerms) match in `text`, as [start, end) ranges of `text` (merged,
 * ascending); case- and accent-insensitive. A word alone of a spaceless script of two or more
 * characters matches wherever it occurs, any other word as the prefix of a word of the text;
 * a phrase where its words begin consecutive words of the text, marked as one range from
 * the start of its first word to the end of its last.
 */
export function matchRanges(text, terms) {
  // The folded text, and for each of its code units the span of the original code point.
  let folded = '';
  const from = [];
  const to = [];
  let at = 0;
  for (const cp of text) {
    const f = fold(cp);
    for (let i = 0; i < f.length; i += 1) {
      from.push(at);
      to.push(at + cp.length);
    }
    folded += f;
    at += cp.length;
  }
  const spans = [];
  const add = (s, e) => {
    const end = e < folded.length ? Math.max(to[e - 1], from[e]) : text.length;
    spans.push([from[s], end]);
  };
  const bodyWords = [...folded.matchAll(WORD)];
  for (const term of terms) {
    const [word] = term;
    if (term.length > 1) {
      for (let i = 0; i + term.length <= bodyWords.length; i += 1) {
        if (term.every((w, j) => w === null || bodyWords[i + j][0].startsWith(w))) {
          add(bodyWords[i].index, bodyWords[i + term.length - 1].index + term.at(-1).length);
        }
      }
    } else if (IS_SPACELESS.test(word) && [...word].length > 1) {
      for (let i = folded.indexOf(word); i >= 0; i = folded.indexOf(word, i + 1)) {
        add(i, i + word.length);
      }
    } else {
      for (const m of bodyWords) if (m[0].startsWith(word)) add(m.index, m.index + word.length);
    }
  }
  spans.sort((a, b) => a[0] - b[0]);
  const merged = [];
  for (const span of spans) {
    const last = merged.at(-1);
    if (last && span[0] <= last[1]) last[1] = Math.max(last[1], span[1]);
    else merged.push([...span]);
  }
  return merged;
}

/** `text` as text nodes, the ranges in <mark>. */
export function highlighted(text, ranges) {
  const parts = [];
  let at = 0;
  for (const [start, end] of ranges) {
    if (start > at) parts.push(text.slice(at, start));
    parts.push(h('mark', { class: 'found', 'data-testid': 'search-match' }, text.slice(start, end)));
    at = end;
  }
  if (at < text.length) parts.push(text.slice(at));
  return parts;
}

export class SearchDialog extends PagedSearch {
  /**
   * @param {{onOpen(room: string, seq: number): void, info(room: string): object|undefined}} hooks
   * @param {AbortSignal} signal
   */
  constructor(hooks, signal) {
    super('search', SEARCH_AFTER_MS, signal);
    this.hooks = hooks;
  }

  /** Show the view; the last search and its results stay, to come back to. */
  open() {
    this.modal.open(this.q);
    this.q.select();
  }

  query() {
    return this.q.value.trim();
  }

  refuse(q) {
    return q ? '' : 'Type words to find in the messages of your rooms.';
  }

  invalid(q) {
    const max = config.maxSearchChars();
    return max != null && [...q].length > max ? `A search has at most ${max} characters.` : '';
  }

  async fetch(q, cursor) {
    const page = await api.search(q, cursor, PAGE);
    const terms = queryTerms(q);
    return {
      items: (page?.results ?? []).map((msg) => this.#item(msg, terms)),
      cursor: page?.next_cursor ?? null,
    };
  }

  failed(err) {
    return err.status === 422 ? `Cannot search for that: ${err.message}.` : `Could not search: ${err.message}`;
  }

  summary(shown, q, more) {
    return shown === 0
      ? `No message in your rooms matches “${q}”.`
      : `${shown} message${shown === 1 ? '' : 's'} found${more ? ' (more below)' : ''}.`;
  }

  pick(button) {
    this.hooks.onOpen(button.dataset.room, Number(button.dataset.seq));
  }

  #item(msg, terms) {
    const info = this.hooks.info(msg.room);
    const kind = info?.kind ?? 'public';
    const date = parseDate(msg.created_at);
    return h('li', { class: 'search-hit', 'data-testid': 'search-result' },
      h('button', {
        type: 'button', class: 'search-open', 'data-room': msg.room, 'data-seq': String(msg.seq),
        'data-testid': 'search-result-open',
      },
      h('span', { class: 'search-meta' },
        h('span', { class: 'search-room', 'data-testid': 'search-room' }, kindIcon(kind),
          h('span', { class: 'visually-hidden' }, `${KIND_TEXT[kind] ?? 'Room'} `), roomLabel(msg.room, info)),
        h('span', { class: 'visually-hidden' }, ', '),
        h('span', { class: 'search-author', 'data-testid': 'search-author' }, msg.author),
        h('span', { class: 'visually-hidden' }, ', '),
        h('time', { class: 'search-time', datetime: date.toISOString(), title: formatDateTime(msg.created_at) },
          relativeTime(date))),
      h('span', { class: 'search-body', 'data-testid': 'search-body' },
        ...highlighted(msg.body ?? '', matchRanges(msg.body ?? '', terms)))));
  }
}
