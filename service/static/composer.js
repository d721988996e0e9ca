// The message box: Enter to send, Shift+Enter for a new line, a length counter near the limit,
// auto-growing height, per-room drafts, and throttled "typing" notifications.

import * as config from './config.js';

const TYPING_EVERY_MS = 3_000;
const MAX_HEIGHT_PX = 240;

/** Code points, which is how the server counts "Unicode characters" (not UTF-16 units). */
const charCount = (text) => [...text].length;

/** crypto.randomUUID exists only in secure contexts; plain http on a LAN address is not one. */
export function newClientId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; // version 4
  b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
  const hex = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export class Composer {
  #dom;
  #hooks;
  #lastTypingSent = 0;
  #autosize = !CSS.supports('field-sizing', 'content');

  /**
   * @param {{composerForm, composer, composerLabel, send, charCount}} dom
   * @param {{onSend(body: string): void, onTyping(): void, onTooLong(max: number): void,
   *   onEditLast?(): boolean, onEscape?(): boolean}} hooks (the last two: true when handled)
   * @param {AbortSignal} signal removes the listeners when the session ends
   */
  constructor(dom, hooks, signal) {
    this.#dom = dom;
    this.#hooks = hooks;
    dom.composerForm.addEventListener('submit', (e) => {
      e.preventDefault();
      this.#submit();
    }, { signal });
    dom.composer.addEventListener('keydown', (e) => this.#onKey(e), { signal });
    dom.composer.addEventListener('input', () => this.#onInput(), { signal });
    // A config that arrives late (see config.js) brings the counter with it.
    config.loaded.then(() => { if (!signal.aborted) this.#changed(); });
  }

  get value() {
    return this.#dom.composer.value;
  }

  /** Point the box at a room (or at none: disabled), restoring that room's draft. */
  setRoom(name, draft = '') {
    const { composer, composerLabel, send } = this.#dom;
    composer.disabled = !name;
    send.disabled = !name;
    composer.placeholder = name ? `Message #${name}` : 'Join a room to start chatting';
    composerLabel.textContent = name ? `Message #${name}` : 'Message';
    composer.value = draft;
    this.#lastTypingSent = 0;
    this.#changed();
  }

  /** Name the box after the room as people know it (a dm by the other person's name). */
  setLabel(text) {
    this.#dom.composer.placeholder = text;
    this.#dom.composerLabel.textContent = text;
  }

  focus() {
    this.#dom.composer.focus({ preventScroll: true });
  }

  #onKey(event) {
    const plain = !event.shiftKey && !event.altKey && !event.ctrlKey && !event.metaKey;
    // ↑ in an empty box edits your last message; Escape drops the reply being written.
    if (event.key === 'ArrowUp' && plain && this.value === '' && this.#hooks.onEditLast?.()) {
      event.preventDefault();
      return;
    }
    if (event.key === 'Escape' && this.#hooks.onEscape?.()) {
      event.preventDefault();
      event.stopPropagation();
      return;
    }
    // Enter sends; Shift+Enter is a new line; Enter that confirms an IME composition is neither.
    if (event.key !== 'Enter' || event.shiftKey || event.isComposing || event.keyCode === 229) return;
    event.preventDefault();
    this.#submit();
  }

  #onInput() {
    this.#changed();
    const now = Date.now();
    if (this.value.trim() && now - this.#lastTypingSent >= TYPING_EVERY_MS) {
      this.#lastTypingSent = now;
      this.#hooks.onTyping();
    }
  }

  #submit() {
    const { composer } = this.#dom;
    if (composer.disabled) return;
    // Drop blank leading lines and trailing whitespace; keep the first line's indentation.
    const body = composer.value.replace(/^(?:[ \t]*\r?\n)+/, '').trimEnd();
    if (!body.trim()) return;
    const max = config.maxMessageChars();
    if (max != null && charCount(body) > max) {
      this.#hooks.onTooLong(max);
      return;
    }
    this.#hooks.onSend(body);
    composer.value = '';
    this.#lastTypingSent = 0; // the next keystroke is a new burst of typing
    this.#changed();
    composer.focus();
  }

  /** Grow the textarea with its content (where CSS field-sizing can't) and update the counter. */
  #changed() {
    const { composer, charCount: counter } = this.#dom;
    if (this.#autosize) {
      composer.style.height = 'auto'; // CSSOM, which the CSP allows (unlike style attributes)
      composer.style.height = `${Math.min(composer.scrollHeight, MAX_HEIGHT_PX)}px`;
    }
    const max = config.maxMessageChars();
    const count = charCount(composer.value);
    const over = max != null && count > max;
    counter.hidden = max == null || count < max * 0.9;
    counter.textContent = max == null ? ''
      : over ? `${count - max} characters too long` : `${max - count} characters left`;
    counter.classList.toggle('is-over', over);
  }
}
