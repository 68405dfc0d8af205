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
  var source = null;

  function say(text, stale) {
    status.textContent = text;
    status.className = stale ? 'live-status stale' : 'live-status';
  }

  // Replacing the live part under an operator's hands would lose what they typed or ticked:
  // wait until they leave the form.
  function operatorIsActing() {
    var active = document.activeElement;
    if (active && live.contains(active) && active.closest('form')) {
      return true;
    }
    return live.querySelector('input[type=checkbox]:checked') !== null;
  }

  // A keyboard user's place: the link they are on, found again in the new content by its
  // address (device and page links are unique on a page).
  function focusedHref() {
    var active = document.activeElement;
    return active && live.contains(active) && active.getAttribute('href');
  }

  function refresh() {
    if (busy || operatorIsActing()) {
      pending = true;
      return;
    }
    busy = true;
    fetch(window.location.href, { credentials: 'same-origin', headers: { Accept: 'text/html' } })
      .then(function (response) {
        if (response.redirected || response.status === 401) {
          // The session ended: the real page goes to sign in.
          window.location.reload();
          return null;
        }
        if (!response.ok) {
          say('Live updates paused: the server answered ' + response.status, true);
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
          var href = focusedHref();
          live.innerHTML = fresh.innerHTML;
          if (href) {
            var again = live.querySelector('[href="' + CSS.escape(href) + '"]');
            if (again) {
              again.focus();
            }
          }
        }
        say('Live · updated ' + new Date().toLocaleTimeString(), false);
      })
      .catch(function () {
        say('Live updates paused: the server did not answer', true);
      })
      .finally(function () {
        busy = false;
        if (pending) {
          pending = false;
          window.setTimeout(refresh, 300);
        }
      });
  }

  // Each open stream holds a connection; a browser keeps only a few per server over HTTP/1.1,
  // so a tab out of sight lets go of its stream and catches up when it is shown again.
  function connect() {
    if (source) {
      return;
    }
    source = new EventSource(status.getAttribute('data-events'));
    source.addEventListener('change', refresh);
    source.addEventListener('progress', refresh);
    // Whatever changed between the page being rendered (or the last stream) and now.
    source.addEventListener('open', refresh);
    source.addEventListener('error', function () {
      if (source && source.readyState === EventSource.CLOSED) {
        // Refused outright (the session ended): the page itself says what to do.
        window.location.reload();
        return;
      }
      say('Reconnecting…', true);
    });
  }

  function disconnect() {
    if (source) {
      source.close();
      source = null;
    }
  }

  document.addEventListener('visibilitychange', function () {
    if (document.hidden) {
      disconnect();
    } else {
      connect();
    }
  });
  document.addEventListener('focusout', function () {
    if (pending) {
      window.setTimeout(refresh, 0);
    }
  });
  if (!document.hidden) {
    connect();
  }
})();
