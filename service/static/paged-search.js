// A dialog that searches as you type and lists the answers a page at a time (public rooms,
// messages): the field, its debounce, "more" following the cursor, answers that arrive out of
// order dropped, the status and error lines. A button with `data-room` in the list picks.

import { Modal, setError } from './dialog.js';

export class PagedSearch {
  #timer = 0;
  #asked = 0;
  #cursor = null;

  /**
   * The elements are `${prefix}-dialog`, `-form`, `-q`, `-list`, `-status`, `-more` and
   * `-error`. Subclasses give query(), refuse(q), fetch(q, cursor), failed(err),
   * summary(shown, q, more) and pick(button), and may give invalid(q).
   * @param {string} prefix
   * @param {number} delay ms of quiet typing before searching
   * @param {AbortSignal} signal
   */
  constructor(prefix, delay, signal) {
    const $ = (id) => document.getElementById(`${prefix}-${id}`);
    this.modal = new Modal($('dialog'), {}, signal);
    this.q = $('q');
    this.list = $('list');
    this.status = $('status');
    this.more = $('more');
    this.error = $('error');
    $('form').addEventListener('submit', (e) => {
      e.preventDefault();
      this.search();
    }, { signal });
    this.q.addEventListener('input', () => {
      clearTimeout(this.#timer);
      this.#timer = setTimeout(() => this.search(), delay);
    }, { signal });
    this.more.addEventListener('click', () => this.#load(false), { signal });
    this.list.addEventListener('click', (event) => {
      const button = event.target.closest('button[data-room]');
      if (!button) return;
      this.modal.close();
      this.pick(button);
    }, { signal });
  }

  /** Why the server would refuse `q` (said under the field, as its 422 is), or ''. */
  invalid() {
    return '';
  }

  close() {
    clearTimeout(this.#timer);
    this.modal.close();
  }

  /** Forget the query and its answers (the session ends: the next user must not see them). */
  forget() {
    this.close();
    this.#asked += 1; // an answer on its way is dropped
    this.#cursor = null;
    this.q.value = '';
    this.q.removeAttribute('aria-invalid');
    this.list.replaceChildren();
    this.list.removeAttribute('aria-busy');
    this.more.hidden = true;
    this.status.textContent = '';
    delete this.status.dataset.query;
    setError(this.error, '');
  }

  search() {
    clearTimeout(this.#timer);
    this.#cursor = null;
    this.#load(true);
  }

  async #load(fresh) {
    const q = this.query();
    const asked = ++this.#asked;
    setError(this.error, '');
    this.q.removeAttribute('aria-invalid');
    const refused = this.refuse(q);
    if (refused) {
      this.#show(q, [], true, null);
      this.status.textContent = refused;
      return;
    }
    const invalid = this.invalid(q);
    if (invalid) {
      this.#fail(q, fresh, invalid, true);
      return;
    }
    this.list.setAttribute('aria-busy', 'true');
    this.more.disabled = true;
    let page;
    try {
      page = await this.fetch(q, fresh ? null : this.#cursor);
    } catch (err) {
      if (asked !== this.#asked) return;
      this.#fail(q, fresh, this.failed(err), err.status === 422);
      return;
    }
    if (asked !== this.#asked) return;
    this.#show(q, page.items, fresh, page.cursor);
    this.status.textContent = this.summary(this.list.childElementCount, q, this.#cursor != null);
    if (!fresh) page.items[0]?.querySelector('button')?.focus();
  }

  /** No answer to `q`: `message` said under the field (`invalid`: about what was typed). */
  #fail(q, fresh, message, invalid) {
    this.#show(q, [], fresh, fresh ? null : this.#cursor);
    if (fresh) this.status.textContent = '';
    if (invalid) this.q.setAttribute('aria-invalid', 'true');
    setError(this.error, message);
  }

  /** The list answers `q` (for tests and tools: `data-query` on the status line). */
  #show(q, items, fresh, cursor) {
    this.list.removeAttribute('aria-busy');
    this.more.disabled = false;
    if (fresh) this.list.replaceChildren(...items);
    else this.list.append(...items);
    this.#cursor = cursor;
    this.more.hidden = !cursor;
    this.status.dataset.query = q;
  }
}
