// "Message someone" (POST /api/dms): any username, with suggestions as you type. The dm
// joins the sidebar under the other person's name and opens.

import * as api from './api.js';
import * as config from './config.js';
import { Modal, setError } from './dialog.js';
import { UserPicker } from './user-picker.js';

export class NewDmDialog {
  #modal;
  #form;
  #input;
  #picker;
  #error;
  #busy = false;

  /**
   * @param {string} me
   * @param {{onOpening(peer: string): void, onOpened(room: object): void}} hooks
   * @param {AbortSignal} signal
   */
  constructor(me, hooks, signal) {
    const $ = (id) => document.getElementById(id);
    this.me = me;
    this.hooks = hooks;
    this.#modal = new Modal($('new-dm-dialog'), { onClose: () => this.#picker.close() }, signal);
    this.#form = $('new-dm-form');
    this.#input = $('new-dm-user');
    this.#error = $('new-dm-error');
    this.#picker = new UserPicker(this.#input, { exclude: () => [me] }, signal);
    this.#form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.#submit();
    }, { signal });
  }

  open() {
    this.#picker.clear();
    setError(this.#error, '');
    this.#input.removeAttribute('aria-invalid');
    this.#modal.open(this.#input);
  }

  close() {
    this.#modal.close();
  }

  async #submit() {
    if (this.#busy) return;
    const name = this.#picker.value;
    let problem = '';
    if (!name) problem = 'Type the username of the person to message.';
    else if (name === this.me) problem = 'That is you. Type someone else’s username.';
    else if (config.refusesUsername(name)) problem = `No one can be called ${name}.`;
    if (problem) {
      this.#invalid(problem);
      return;
    }
    this.#busy = true;
    this.#form.setAttribute('aria-busy', 'true');
    this.hooks.onOpening(name);
    try {
      const room = await api.openDm(name);
      this.#modal.close();
      this.hooks.onOpened(room);
    } catch (err) {
      this.#invalid(refusal(err, name));
    } finally {
      this.#busy = false;
      this.#form.removeAttribute('aria-busy');
    }
  }

  #invalid(message) {
    setError(this.#error, message);
    this.#input.setAttribute('aria-invalid', 'true');
    this.#input.focus();
  }
}

/** Why POST /api/dms refused to open a dm with `name`, in words. */
export function refusal(err, name) {
  switch (err.status) {
    case 404: return `There is no user named ${name}.`;
    case 403: return `You cannot message ${name}: ${err.message}.`;
    case 422: return `Not accepted: ${err.message}`;
    case 429: return 'You have opened many conversations lately. Wait a while and try again.';
    default: return err.message || `Something went wrong (HTTP ${err.status}).`;
  }
}
