// The sign-in / sign-up view: its tabs, checking the form before sending
// it, and the errors a person can act on.

import { authErrorText } from './api.js';
import { $, show } from './dom.js';
import { api } from './net.js';

let authMode = 'signin';
let signedIn = () => {};

/** Wires the view; `onSignedIn(token, user)` is called after a sign-in or sign-up. */
export function wireAuthView(onSignedIn) {
  signedIn = onSignedIn;
  $('tab-signin').addEventListener('click', () => setAuthMode('signin'));
  $('tab-signup').addEventListener('click', () => setAuthMode('signup'));
  $('auth-form').addEventListener('submit', submitAuth);
}

/** Shows the view (on the sign-in tab), with `message` as its error if given. */
export function showAuthView(message) {
  show($('app-view'), false);
  show($('auth-view'));
  setAuthMode('signin');
  if (message) {
    $('auth-error').textContent = message;
    show($('auth-error'));
  }
}

export function hideAuthView() {
  show($('auth-view'), false);
}

function setAuthMode(mode) {
  authMode = mode;
  const signup = mode === 'signup';
  $('tab-signin').setAttribute('aria-selected', String(!signup));
  $('tab-signup').setAttribute('aria-selected', String(signup));
  show($('auth-display-row'), signup);
  $('auth-submit').textContent = signup ? 'Create account' : 'Sign in';
  $('auth-password').autocomplete = signup ? 'new-password' : 'current-password';
  show($('auth-error'), false);
}

async function submitAuth(ev) {
  ev.preventDefault();
  const username = $('auth-username').value.trim();
  const password = $('auth-password').value;
  const error = $('auth-error');
  const local = validateAuth(username, password);
  if (local) {
    error.textContent = local;
    show(error);
    return;
  }
  const button = $('auth-submit');
  button.disabled = true;
  show(error, false);
  try {
    const answer =
      authMode === 'signup'
        ? await api.register(username, password, $('auth-display').value.trim())
        : await api.login(username, password);
    $('auth-password').value = '';
    signedIn(answer.token, answer.user);
  } catch (e) {
    error.textContent = authErrorText(e, authMode);
    show(error);
  } finally {
    button.disabled = false;
  }
}

function validateAuth(username, password) {
  if (username.length < 3 || username.length > 32) return 'Usernames are 3 to 32 characters long.';
  if (!/^[A-Za-z0-9_.-]+$/.test(username)) {
    return 'Usernames use letters, digits, "_", "." and "-" only.';
  }
  if (password.length < 8) return 'Passwords are at least 8 characters long.';
  return null;
}
