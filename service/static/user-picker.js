// A username field that suggests names as you type (GET /api/users?q=): the ARIA 1.2
// combobox pattern. Arrow keys move through the suggestions, Enter takes one, Escape closes
// them; typing a whole name and pressing Enter works without ever looking at the list.

import * as api from './api.js';
import { announce } from './dialog.js';
import { h } from './render.js';

const SUGGEST_AFTER_MS = 150;
const SUGGESTIONS = 8;

let pickers = 0;

export class UserPicker {
  #input;
  #list;
  #options = [];
  #active = -1;
  #timer = 0;
  #asked = 0;
  #exclude;

  /**
   * @param {HTMLInputElement} input inside a `.picker` element, where the list is added
   * @param {{exclude?(): Iterable<string>}} opts names never suggested (yourself, members)
   * @param {AbortSignal} signal
   */
  constructor(input, { exclude = () => [] } = {}, signal) {
    this.#input = input;
    this.#exclude = exclude;
    pickers += 1;
    const id = `user-suggestions-${pickers}`;
    this.#list = h('ul', {
      class: 'suggestions', id, role: 'listbox', 'aria-label': 'Suggested usernames',
      'data-testid': 'user-suggestions', hidden: true,
    });
    input.after(this.#list);
    input.setAttribute('role', 'combobox');
    input.setAttribute('aria-autocomplete', 'list');
    input.setAttribute('aria-controls', id);
    input.setAttribute('aria-expanded', 'false');
    input.addEventListener('input', () => this.#schedule(), { signal });
    input.addEventListener('keydown', (e) => this.#onKey(e), { signal });
    input.addEventListener('blur', () => setTimeout(() => this.close(), 100), { signal });
    // mousedown, not click: taking the name before the input's blur closes the list.
    this.#list.addEventListener('mousedown', (event) => {
      const option = event.target.closest('[role="option"]');
      if (!option) return;
      event.preventDefault();
      this.#take(option.dataset.username);
    }, { signal });
  }

  /** The typed name, trimmed and lower-cased (names are case-insensitive). */
  get value() {
    return this.#input.value.trim().toLowerCase();
  }

  clear() {
    this.#input.value = '';
    this.close();
  }

  close() {
    clearTimeout(this.#timer);
    this.#asked += 1; // an answer still on its way is no longer wanted
    this.#options = [];
    this.#active = -1;
    this.#list.replaceChildren();
    this.#list.hidden = true;
    this.#input.setAttribute('aria-expanded', 'false');
    this.#input.removeAttribute('aria-activedescendant');
  }

  #schedule() {
    clearTimeout(this.#timer);
    const q = this.value;
    if (!q) {
      this.close();
      return;
    }
    this.#timer = setTimeout(() => this.#suggest(q), SUGGEST_AFTER_MS);
  }

  async #suggest(q) {
    const asked = ++this.#asked;
    let names = [];
    try {
      names = (await api.findUsers(q, SUGGESTIONS + 2))?.users ?? [];
    } catch {
      return; // suggestions are a help, not a requirement: typing the name still works
    }
    if (asked !== this.#asked) return;
    const excluded = new Set(this.#exclude());
    this.#show(names.filter((n) => !excluded.has(n)).slice(0, SUGGESTIONS));
  }

  #show(names) {
    this.#options = names;
    this.#active = -1;
    const id = this.#list.id;
    this.#list.replaceChildren(...names.map((name, i) => h('li', {
      id: `${id}-${i}`, role: 'option', class: 'suggestion', 'aria-selected': 'false',
      'data-username': name, 'data-testid': 'user-suggestion',
    }, name)));
    const open = names.length > 0;
    this.#list.hidden = !open;
    this.#input.setAttribute('aria-expanded', String(open));
    this.#input.removeAttribute('aria-activedescendant');
    announce(open ? `${names.length} suggestion${names.length === 1 ? '' : 's'}` : 'No matching usernames');
  }

  #onKey(event) {
    const open = !this.#list.hidden;
    switch (event.key) {
      case 'ArrowDown':
      case 'ArrowUp': {
        if (!open) return;
        event.preventDefault();
        const n = this.#options.length;
        const step = event.key === 'ArrowDown' ? 1 : -1;
        this.#highlight(this.#active < 0 ? (step > 0 ? 0 : n - 1) : (this.#active + step + n) % n);
        break;
      }
      case 'Enter':
        if (open && this.#active >= 0) {
          event.preventDefault(); // take the suggestion; a second Enter submits
          this.#take(this.#options[this.#active]);
        }
        break;
      case 'Escape':
        if (open) {
          event.preventDefault(); // close the list, not the dialog around it
          event.stopPropagation();
          this.close();
        }
        break;
      default:
        break;
    }
  }

  #highlight(index) {
    this.#active = index;
    for (const [i, option] of [...this.#list.children].entries()) {
      option.setAttribute('aria-selected', String(i === index));
      option.classList.toggle('is-active', i === index);
    }
    this.#input.setAttribute('aria-activedescendant', `${this.#list.id}-${index}`);
  }

  #take(name) {
    this.#input.value = name;
    this.close();
    this.#input.focus();
  }
}
