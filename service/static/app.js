// Entry point: decides between the login screen and the chat, and runs the login form.
//
// The session lives in an HttpOnly cookie the page cannot read, so "am I signed in?" is
// answered by asking the server: GET /api/rooms answers 401 when we are not.

import * as api from './api.js';
import { ChatSession } from './chat.js';
import * as config from './config.js';
import { applyLimits, codePoints } from './limits.js';

const USER_KEY = 'chat.username';

const $ = (id) => document.getElementById(id);
const dom = {
  boot: $('boot'),
  bootText: $('boot-text'),
  bootRetry: $('boot-retry'),
  auth: $('auth'),
  loginForm: $('login-form'),
  username: $('login-username'),
  password: $('login-password'),
  loginSubmit: $('login-submit'),
  registerSubmit: $('register-submit'),
  loginError: $('login-error'),
  chat: $('chat'),
  conn: $('conn-status'),
  reconnect: $('reconnect-now'),
  currentUser: $('current-user'),
  meAvatar: $('me-avatar'),
  logout: $('logout'),
  joinForm: $('join-form'),
  roomInput: $('room-input'),
  roomError: $('room-error'),
  roomList: $('room-list'),
  roomEmpty: $('room-empty'),
  dmList: $('dm-list'),
  dmEmpty: $('dm-empty'),
  newRoomOpen: $('new-room-open'),
  newDmOpen: $('new-dm-open'),
  browseOpen: $('browse-open'),
  searchOpen: $('search-open'),
  sessionsOpen: $('sessions-open'),
  notifyToggle: $('notify-toggle'),
  membersOpen: $('members-open'),
  roomKind: $('room-kind'),
  roomNotice: $('room-notice'),
  sidebarToggle: $('sidebar-toggle'),
  onlineToggle: $('online-toggle'),
  onlineCount: $('online-count'),
  backdrop: $('backdrop'),
  roomTitle: $('room-title'),
  toast: $('toast'),
  messages: $('messages'),
  messageAnnouncer: $('message-announcer'),
  newPill: $('new-pill'),
  typing: $('typing'),
  composerForm: $('composer-form'),
  composerLabel: $('composer-label'),
  composer: $('composer'),
  send: $('send'),
  charCount: $('char-count'),
  online: $('online'),
  replyBar: $('reply-bar'),
  replyText: $('reply-text'),
  replyCancel: $('reply-cancel'),
  deleteDialog: $('delete-dialog'),
  deleteTitle: $('delete-title'),
  deleteQuote: $('delete-quote'),
  deleteConfirm: $('delete-confirm'),
  onlinePanel: $('online-panel'),
};

/** @type {ChatSession|null} */
let session = null;

// A session ends when it expires, when it is ended from another device (or "log out
// everywhere"), or when an admin bans the user: REST answers 401, the socket closes with 1008.
const SESSION_ENDED = 'Your session has ended (it expired, or was ended from another device). '
  + 'Please log in again.';

api.onUnauthorized(() => {
  if (session) signOut(SESSION_ENDED);
});

// ------------------------------------------------------------------------------------ screens

function showOnly(screen) {
  dom.boot.hidden = screen !== 'boot';
  dom.auth.hidden = screen !== 'auth';
  dom.chat.hidden = screen !== 'chat';
}

function showLogin(message = '') {
  showOnly('auth');
  setLoginError(message);
  document.title = 'Log in · Chat';
  (dom.username.value ? dom.password : dom.username).focus();
}

function setLoginError(message) {
  dom.loginError.textContent = message;
  dom.loginError.hidden = !message;
}

function startSession(me, rooms) {
  session?.destroy();
  showOnly('chat');
  session = new ChatSession(me, dom, {
    onExpired: () => signOut(SESSION_ENDED),
    onSignedOut: (message) => signOut(message),
    closePanels,
  });
  session.start(rooms);
}

function signOut(message = '') {
  session?.destroy();
  session = null;
  sessionStorage.removeItem(USER_KEY);
  dom.password.value = '';
  showLogin(message);
}

/**
 * The signed-in user's name. GET /api/me is the source of truth; a server without it (404)
 * falls back to the name typed at login in this tab. Null when nobody is signed in, or when
 * we cannot tell who (a new tab on a server without /api/me): the caller asks to log in.
 */
async function whoAmI() {
  try {
    const answer = await api.me();
    if (typeof answer?.username === 'string' && answer.username) {
      sessionStorage.setItem(USER_KEY, answer.username);
      return answer.username;
    }
  } catch (err) {
    if (err.status === 401) return null;
  }
  return sessionStorage.getItem(USER_KEY);
}

async function boot() {
  showOnly('boot');
  dom.bootText.textContent = 'Loading…';
  dom.bootRetry.hidden = true;
  // The config is fetched alongside, so the forms have the server's rules when they show;
  // config.load never rejects (without a config, see config.js).
  const [probe] = await Promise.allSettled([api.listRooms(), config.load()]);
  if (probe.status === 'rejected') {
    const err = probe.reason;
    if (err.status === 401) {
      showLogin();
      return;
    }
    dom.bootText.textContent = err.status ? `The server answered: ${err.message}` : err.message;
    dom.bootRetry.hidden = false;
    dom.bootRetry.focus();
    return;
  }
  const rooms = probe.value;
  const me = await whoAmI();
  if (me) startSession(me, rooms);
  else showLogin();
}

// --------------------------------------------------------------------------------- login form

function loginErrorFor(mode, err) {
  if (mode === 'register' && err.status === 409) return 'That username is already taken.';
  if (mode === 'login' && err.status === 401) return 'Wrong username or password.';
  if (err.status === 422) return `Not accepted: ${err.message}`;
  if (err.status === 429) return 'Too many attempts. Wait a moment and try again.';
  return err.message || `Something went wrong (HTTP ${err.status}).`;
}

function validate(mode, username, password) {
  if (!username || !password) return 'Enter a username and a password.';
  if (mode !== 'register') return '';
  if (config.refusesUsername(username)) {
    return `Not a valid username: names must match ${config.usernamePattern()}`;
  }
  const bounds = config.passwordLengths();
  if (bounds && codePoints(password) < bounds.min) return `Passwords need at least ${bounds.min} characters.`;
  if (bounds && codePoints(password) > bounds.max) return `Passwords can have at most ${bounds.max} characters.`;
  return '';
}

let busy = false;

async function authenticate(mode) {
  if (busy) return;
  // Names are case-insensitive and stored lower-case; matching that here keeps "Alice" and
  // "alice" the same account and the name we show identical to the server's.
  const username = dom.username.value.trim().toLowerCase();
  const password = dom.password.value;
  const problem = validate(mode, username, password);
  if (problem) {
    setLoginError(problem);
    (username ? dom.password : dom.username).focus();
    return;
  }

  busy = true;
  setLoginError('');
  dom.loginForm.setAttribute('aria-busy', 'true');
  dom.loginSubmit.disabled = true;
  dom.registerSubmit.disabled = true;
  try {
    if (mode === 'register') await api.register(username, password);
    await api.login(username, password);
    sessionStorage.setItem(USER_KEY, username);
    const [rooms, me] = await Promise.all([api.listRooms(), whoAmI()]);
    dom.password.value = '';
    startSession(me ?? username, rooms);
  } catch (err) {
    setLoginError(loginErrorFor(mode, err));
    dom.password.focus();
  } finally {
    busy = false;
    dom.loginForm.removeAttribute('aria-busy');
    dom.loginSubmit.disabled = false;
    dom.registerSubmit.disabled = false;
  }
}

dom.loginForm.addEventListener('submit', (event) => {
  event.preventDefault();
  authenticate('login');
});
dom.registerSubmit.addEventListener('click', () => authenticate('register'));

dom.logout.addEventListener('click', async () => {
  dom.logout.disabled = true;
  try {
    await api.logout();
  } catch {
    // Even if the server is unreachable, leave this tab signed out.
  } finally {
    dom.logout.disabled = false;
    signOut();
  }
});

dom.bootRetry.addEventListener('click', boot);

// ------------------------------------------------------------------- narrow-screen panels
// Below 700 px the room list, and below 1000 px the online list, slide over the messages.

let panelOpener = null;

function togglePanel(className, button) {
  panelOpener = button;
  const open = dom.chat.classList.toggle(className);
  button.setAttribute('aria-expanded', String(open));
  dom.backdrop.hidden = !dom.chat.matches('.sidebar-open, .online-open');
  if (open) (className === 'sidebar-open' ? dom.roomInput : dom.onlinePanel).focus();
}

function closePanels() {
  const wasOpen = dom.chat.matches('.sidebar-open, .online-open');
  dom.chat.classList.remove('sidebar-open', 'online-open');
  dom.sidebarToggle.setAttribute('aria-expanded', 'false');
  dom.onlineToggle.setAttribute('aria-expanded', 'false');
  dom.backdrop.hidden = true;
  return wasOpen;
}

dom.sidebarToggle.addEventListener('click', () => togglePanel('sidebar-open', dom.sidebarToggle));
dom.onlineToggle.addEventListener('click', () => togglePanel('online-open', dom.onlineToggle));
dom.backdrop.addEventListener('click', closePanels);
document.addEventListener('keydown', (event) => {
  // Hand focus back to the button that opened the panel, as a dialog would.
  if (event.key === 'Escape' && closePanels()) panelOpener?.focus();
});

config.loaded.then(applyLimits);
boot();
