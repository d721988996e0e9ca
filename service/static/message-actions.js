// What a user does to a message (v2): the menu (reply, edit, delete), the reaction picker, the
// inline editor and the delete confirmation. One popup at a time; each is reachable and
// worked by keyboard (arrows in the menu, Tab in the picker, Escape closes and gives the
// focus back to the button that opened it). The socket commands are the session's (hooks).

import * as config from './config.js';
import { Modal, announce, setError } from './dialog.js';
import { codePoints, utf16Bound } from './limits.js';
import { QUICK_EMOJI, excerpt, refusesEmoji } from './message-parts.js';
import { h } from './render.js';

export class MessageActions {
  #hooks;
  /** {el, opener, close()} of the open menu or picker */
  #popup = null;
  #deleteModal;
  #deleteDom;
  /** {view, seq} the delete dialog asks about */
  #deleting = null;

  /**
   * @param {{deleteDialog, deleteQuote, deleteTitle, deleteConfirm}} dom
   * @param {{
   *   me: string,
   *   canDelete(view, msg): boolean,
   *   edit(view, seq, body): boolean,     // false: not connected
   *   remove(view, seq): boolean,
   *   react(view, seq, emoji, op): boolean,
   *   reply(view, seq): void,
   *   editDone(): void,                   // give the focus back to the composer
   * }} hooks
   * @param {AbortSignal} signal
   */
  constructor(dom, hooks, signal) {
    this.#hooks = hooks;
    this.#deleteDom = dom;
    this.#deleteModal = new Modal(dom.deleteDialog, { onClose: () => { this.#deleting = null; } }, signal);
    dom.deleteConfirm.addEventListener('click', () => this.#confirmDelete(), { signal });
    document.addEventListener('pointerdown', (e) => {
      if (this.#popup && !this.#popup.el.contains(e.target) && e.target !== this.#popup.opener) {
        this.closePopup(false);
      }
    }, { signal });
  }

  /** The session ends: nothing stays open. */
  close() {
    this.closePopup(false);
    this.#deleteModal.close();
  }

  closePopup(refocus = true) {
    const popup = this.#popup;
    if (!popup) return;
    this.#popup = null;
    popup.el.remove();
    popup.opener.setAttribute('aria-expanded', 'false');
    if (refocus && popup.opener.isConnected) popup.opener.focus();
  }

  // ------------------------------------------------------------------------------------ menu

  /** The "More actions" menu of message `seq`. */
  openMenu(button, view, seq) {
    if (this.#toggleOff(button)) return;
    const msg = view.message(seq);
    if (!msg || msg.deleted) return;
    const items = [['reply', 'Reply']];
    if (msg.author === this.#hooks.me) items.push(['edit', 'Edit']);
    if (this.#hooks.canDelete(view, msg)) items.push(['delete', 'Delete…']);
    const buttons = items.map(([action, text]) => h('button', {
      type: 'button', role: 'menuitem', tabindex: '-1', class: `menu-item is-${action}`,
      'data-testid': `menu-${action}`, 'data-menu': action,
    }, text));
    const el = h('ul', { class: 'popup popup-menu', role: 'menu', 'aria-label': `Message by ${msg.author}` },
      buttons.map((b) => h('li', { role: 'none' }, b)));
    el.addEventListener('keydown', (e) => {
      const i = buttons.indexOf(document.activeElement);
      const go = (n) => { e.preventDefault(); buttons[(n + buttons.length) % buttons.length].focus(); };
      if (e.key === 'ArrowDown') go(i + 1);
      else if (e.key === 'ArrowUp') go(i - 1);
      else if (e.key === 'Home') go(0);
      else if (e.key === 'End') go(buttons.length - 1);
      else if (e.key === 'Escape') { e.preventDefault(); e.stopPropagation(); this.closePopup(); }
      else if (e.key === 'Tab') this.closePopup(false);
    });
    el.addEventListener('click', (e) => {
      const item = e.target.closest('[data-menu]');
      if (!item) return;
      this.closePopup(false);
      if (item.dataset.menu === 'reply') this.#hooks.reply(view, seq);
      else if (item.dataset.menu === 'edit') this.startEdit(view, seq, { opener: button });
      else this.askDelete(view, seq, button);
    });
    this.#show(el, button);
    buttons[0].focus();
  }

  // ---------------------------------------------------------------------------------- picker

  /** The reaction picker: a quick row of common emoji, and any emoji typed. */
  openPicker(button, view, seq) {
    if (this.#toggleOff(button)) return;
    const msg = view.message(seq);
    if (!msg || msg.deleted) return;
    const mine = new Set(msg.reactions.filter((r) => r.me).map((r) => r.emoji));
    const react = (emoji) => {
      const op = mine.has(emoji) ? 'remove' : 'add';
      if (this.#hooks.react(view, seq, emoji, op)) this.closePopup();
    };
    const quick = QUICK_EMOJI.map((emoji) => h('button', {
      type: 'button', class: 'picker-emoji', 'data-testid': 'picker-emoji', 'data-emoji': emoji,
      'aria-pressed': String(mine.has(emoji)), title: emoji,
    }, emoji));
    const inputId = `picker-input-${seq}`;
    const errorId = `picker-error-${seq}`;
    const input = h('input', {
      id: inputId, type: 'text', class: 'picker-input', 'data-testid': 'picker-input',
      autocomplete: 'off', maxlength: utf16Bound(config.maxEmojiChars()), 'aria-describedby': errorId,
    });
    const error = h('p', { class: 'field-error', id: errorId, role: 'alert', hidden: true });
    const form = h('form', { class: 'picker-form', novalidate: true },
      h('label', { for: inputId }, 'Any emoji'),
      h('div', { class: 'picker-row' }, input,
        h('button', { type: 'submit', class: 'btn btn-primary btn-small', 'data-testid': 'picker-add' }, 'React')),
      error);
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const emoji = input.value.trim();
      const problem = refusesEmoji(emoji, config.maxEmojiChars());
      setError(error, problem);
      if (problem) input.focus();
      else react(emoji);
    });
    const el = h('div', {
      class: 'popup emoji-picker', role: 'dialog', 'aria-label': 'Add a reaction',
      'data-testid': 'emoji-picker',
    }, h('div', { class: 'picker-quick', role: 'group', 'aria-label': 'Common reactions' }, quick), form);
    el.addEventListener('click', (e) => {
      const pick = e.target.closest('.picker-emoji');
      if (pick) react(pick.dataset.emoji);
    });
    el.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') { e.preventDefault(); e.stopPropagation(); this.closePopup(); }
    });
    el.addEventListener('focusout', (e) => {
      if (this.#popup?.el === el && e.relatedTarget && !el.contains(e.relatedTarget)) this.closePopup(false);
    });
    this.#show(el, button);
    quick[0].focus();
  }

  // ---------------------------------------------------------------------------------- editor

  /**
   * Edit message `seq` in place: Enter saves, Shift+Enter is a new line, Escape cancels. The
   * focus goes back to `opener` (the menu button), or to the composer.
   */
  startEdit(view, seq, { opener = null } = {}) {
    const row = view.rowOf(seq);
    const msg = view.message(seq);
    if (!row || !msg || msg.deleted || msg.author !== this.#hooks.me) return false;
    const existing = row.querySelector('.msg-editor textarea');
    if (existing) {
      existing.focus();
      return true;
    }
    const text = row.querySelector('.msg-text');
    const id = `edit-${view.name}-${seq}`;
    const box = h('textarea', {
      id, class: 'edit-box', 'data-testid': 'edit-box', rows: '2', 'aria-describedby': `${id}-hint`,
    });
    box.value = msg.body;
    const error = h('span', { class: 'edit-error', 'data-testid': 'edit-error', role: 'alert' });
    const editor = h('div', { class: 'msg-editor' },
      h('label', { for: id, class: 'visually-hidden' }, 'Edit message'), box,
      h('p', { class: 'edit-hint', id: `${id}-hint` },
        'Enter to save · Escape to cancel ',
        h('button', { type: 'button', class: 'link-btn', 'data-testid': 'edit-save' }, 'Save'), ' ',
        h('button', { type: 'button', class: 'link-btn', 'data-testid': 'edit-cancel' }, 'Cancel'), ' ',
        error));
    const close = () => {
      editor.remove();
      text.hidden = false;
      row.classList.remove('is-editing');
      if (opener?.isConnected) opener.focus();
      else this.#hooks.editDone();
    };
    const save = () => {
      const body = box.value.replace(/^(?:[ \t]*\r?\n)+/, '').trimEnd();
      const max = config.maxMessageChars();
      const current = view.message(seq);
      if (!current || current.deleted) return close();
      if (!body.trim()) {
        error.textContent = 'A message cannot be empty: delete it instead.';
        return undefined;
      }
      if (max != null && codePoints(body) > max) {
        error.textContent = `Messages can be at most ${max} characters.`;
        return undefined;
      }
      if (body === current.body) return close();
      if (!this.#hooks.edit(view, seq, body)) {
        error.textContent = 'Not connected: try again in a moment.';
        return undefined;
      }
      // Shown at once; the `edit` frame confirms it (an error puts the old text back).
      const shown = row.querySelector('.msg-body');
      shown.textContent = body;
      shown.dataset.shown = '';
      return close();
    };
    box.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        save();
      } else if (e.key === 'Escape') {
        e.preventDefault();
        e.stopPropagation();
        close();
      }
    });
    editor.addEventListener('click', (e) => {
      const action = e.target.closest('[data-testid]')?.dataset.testid;
      if (action === 'edit-save') save();
      else if (action === 'edit-cancel') close();
    });
    editor.addEventListener('cancel-edit', close);
    text.hidden = true;
    row.classList.add('is-editing');
    text.after(editor);
    box.focus();
    box.setSelectionRange(box.value.length, box.value.length);
    announce('Editing your message. Enter saves, Escape cancels.');
    return true;
  }

  // ---------------------------------------------------------------------------------- delete

  askDelete(view, seq, opener) {
    const msg = view.message(seq);
    if (!msg || msg.deleted) return;
    const d = this.#deleteDom;
    this.#deleting = { view, seq };
    d.deleteTitle.textContent = msg.author === this.#hooks.me
      ? 'Delete your message?' : `Delete ${msg.author}'s message?`;
    d.deleteQuote.textContent = excerpt(msg.body, 200);
    opener?.focus({ preventScroll: true });
    this.#deleteModal.open(d.deleteConfirm);
  }

  #confirmDelete() {
    const target = this.#deleting;
    this.#deleteModal.close();
    if (target && !this.#hooks.remove(target.view, target.seq)) {
      announce('Not deleted: not connected. Try again in a moment.');
    }
  }

  // --------------------------------------------------------------------------------- private

  /** A second press of the button of the open popup closes it. */
  #toggleOff(button) {
    const same = this.#popup?.opener === button;
    this.closePopup(false);
    return same;
  }

  #show(el, opener) {
    const host = opener.closest('.msg-line') ?? opener.parentElement;
    host.append(el);
    opener.setAttribute('aria-expanded', 'true');
    this.#popup = { el, opener };
    // Open upwards when there is no room below (the last messages of the view).
    const scroller = el.closest('.messages');
    if (scroller && el.getBoundingClientRect().bottom > scroller.getBoundingClientRect().bottom) {
      el.classList.add('opens-up');
    }
  }
}
