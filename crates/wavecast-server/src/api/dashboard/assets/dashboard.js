// wavecast dashboard: confirmations for actions that cannot be undone, and live refresh.
// No framework and no build step. Every page works without this script; it only asks before an
// irreversible action and refreshes the live part of a page when the server says it changed.
(function () {
  'use strict';

  // A form (or the button that submits it) with data-confirm asks first.
  document.addEventListener('submit', function (event) {
    var button = event.submitter;
    var message = (button && button.getAttribute('data-confirm')) || event.target.getAttribute('data-confirm');
    if (message && !window.confirm(message)) {
      event.preventDefault();
    }
  });

  var live = document.querySelector('[data-live]');
  var status = document.getElementById('live-status');
  if (!live || !status || !window.EventSource) {
    return;
  }

  var busy = false;
  var pending = false;

  // Replacing the live part under an operator's hands would lose what they typed or ticked:
  // wait until they leave the form.
  function operatorIsActing() {
    var active = document.activeElement;
    if (active && live.contains(active) && active.closest('form')) {
      return true;
    }
    return live.querySelector('input[type=checkbox]:checked') !== null;
  }

  function refresh() {
    if (busy || operatorIsActing()) {
      pending = true;
      return;
    }
    busy = true;
    fetch(window.location.href, { credentials: 'same-origin', headers: { Accept: 'text/html' } })
      .then(function (response) {
        if (response.redirected || !response.ok) {
          // Signed out or gone: show the browser the real page.
          window.location.reload();
          return null;
        }
        return response.text();
      })
      .then(function (text) {
        if (text === null) {
          return;
        }
        var fresh = new DOMParser().parseFromString(text, 'text/html').querySelector('[data-live]');
        if (fresh && fresh.innerHTML !== live.innerHTML) {
          live.innerHTML = fresh.innerHTML;
        }
        status.textContent = 'Live · updated ' + new Date().toLocaleTimeString();
        status.className = 'live-status';
      })
      .catch(function () {
        status.textContent = 'Live updates paused: the server did not answer';
        status.className = 'live-status stale';
      })
      .finally(function () {
        busy = false;
        if (pending) {
          pending = false;
          window.setTimeout(refresh, 300);
        }
      });
  }

  var source = new EventSource(status.getAttribute('data-events'));
  source.addEventListener('change', refresh);
  source.addEventListener('progress', refresh);
  source.addEventListener('open', function () {
    status.textContent = 'Live';
    status.className = 'live-status';
  });
  source.addEventListener('error', function () {
    status.textContent = 'Reconnecting…';
    status.className = 'live-status stale';
  });
  document.addEventListener('focusout', function () {
    if (pending) {
      window.setTimeout(refresh, 0);
    }
  });
})();
