// Modal views (native <dialog> opened with showModal: the rest of the page is inert, focus
// stays inside, Escape closes) and the page's polite announcements.

/**
 * One <dialog>. Buttons marked `data-close` close it; on close, focus goes back to what opened
 * it (or to `fallback` when that is gone, e.g. a sidebar item that left the list).
 */
export class Modal {
  #opener = null;

  /**
   * @param {HTMLDialogElement} el
   * @param {{onClose?(): void, fallback?(): HTMLElement|null}} hooks
   * @param {AbortSignal} signal removes the listeners when the session ends
   */
  constructor(el, { onClose = () => {}, fallback = () => null } = {}, signal) {
    this.el = el;
    el.addEventListener('click', (event) => {
      if (event.target.closest('[data-close]')) this.close();
    }, { signal });
    el.addEventListener('close', () => {
      onClose();
      const back = this.#opener?.isConnected && !this.#opener.closest('[hidden]')
        ? this.#opener : fallback();
      this.#opener = null;
      back?.focus({ preventScroll: true });
    }, { signal });
  }

  get isOpen() {
    return this.el.open;
  }

  /** Show it, focusing `focus` (else its first field or button). */
  open(focus = null) {
    if (!this.el.open) {
      this.#opener = document.activeElement instanceof HTMLElement ? document.activeElement : null;
      this.el.showModal();
    }
    const target = focus ?? this.el.querySelector('input:not([type="radio"]), select, button');
    target?.focus();
  }

  close() {
    if (this.el.open) this.el.close();
  }
}

/** Show `message` in an error line (role=alert), or hide it when empty. */
export function setError(el, message) {
  el.textContent = message ?? '';
  el.hidden = !message;
}

let announceTimer = 0;

/**
 * Say `text` politely to screen readers (the #announcer live region). The region is emptied
 * first and filled a moment later, so the same words twice are announced twice.
 */
export function announce(text) {
  const region = document.getElementById('announcer');
  if (!region) return;
  clearTimeout(announceTimer);
  region.textContent = '';
  announceTimer = setTimeout(() => { region.textContent = text; }, 50);
}
