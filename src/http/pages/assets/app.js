// credgate's hosted pages: the little that needs a script. Served from
// credgate itself (CSP script-src 'self'); no inline script, no library.
(function () {
  'use strict';
  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.getAttribute('content') : '';

  // A page opened from its one-time link moves on to itself without the token.
  var next = document.getElementById('continue');
  if (next) {
    window.location.replace(next.getAttribute('data-next'));
    return;
  }

  // Provider search: filter the grid as you type.
  var search = document.getElementById('provider-search');
  if (search) {
    var filter = function () {
      var q = search.value.trim().toLowerCase();
      var shown = 0;
      document.querySelectorAll('[data-provider-name]').forEach(function (card) {
        var match = !q || card.getAttribute('data-provider-name').indexOf(q) >= 0;
        card.hidden = !match;
        if (match) { shown += 1; }
      });
      var none = document.getElementById('no-match');
      if (none) { none.hidden = shown > 0; }
    };
    search.addEventListener('input', filter);
  }

  // Test buttons: POST, spinner, then ✓ or ✗ with the reason.
  document.querySelectorAll('[data-test-url]').forEach(function (button) {
    button.addEventListener('click', function () {
      var out = document.getElementById(button.getAttribute('data-test-output'));
      var form = button.form || null;
      button.disabled = true;
      out.className = 'probe running';
      out.setAttribute('aria-busy', 'true');
      out.textContent = 'Testing…';
      // The last answer's field errors (the server's or a test's) go away.
      document.querySelectorAll('.field-error').forEach(function (e) { e.remove(); });
      document.querySelectorAll('.field.invalid').forEach(function (e) { e.classList.remove('invalid'); });
      var body = form ? new URLSearchParams(new FormData(form)) : null;
      fetch(button.getAttribute('data-test-url'), {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'X-CSRF-Token': csrf },
        body: body
      }).then(function (response) {
        return response.json().catch(function () {
          return { ok: false, message: 'This page is out of date or its session ended; reload it and try again.' };
        });
      }).then(function (result) {
        out.className = 'probe ' + (result.ok ? 'passed' : 'failed');
        out.textContent = (result.ok ? '✓ ' : '✗ ') + result.message;
        (result.errors || []).forEach(function (e) {
          var name = String(e.field).replace(/^fields\./, '');
          var input = document.getElementById('f-' + name);
          if (!input) { return; }
          var p = document.createElement('p');
          p.className = 'field-error';
          p.textContent = e.message;
          input.parentNode.classList.add('invalid');
          input.parentNode.appendChild(p);
        });
      }).catch(function () {
        out.className = 'probe failed';
        out.textContent = '✗ credgate could not be reached; check your connection and try again.';
      }).then(function () {
        button.disabled = false;
        out.removeAttribute('aria-busy');
      });
    });
  });

  // OAuth: the provider opens in a popup; its result page posts back here.
  document.querySelectorAll('a[data-popup]').forEach(function (link) {
    link.addEventListener('click', function (event) {
      event.preventDefault();
      var popup = window.open(link.href, 'credgate-oauth', 'popup,width=560,height=720');
      if (!popup) { window.location.href = link.href; }
    });
  });
  document.querySelectorAll('form[data-popup]').forEach(function (form) {
    form.addEventListener('submit', function (event) {
      event.preventDefault();
      var url = form.action + '?' + new URLSearchParams(new FormData(form)).toString();
      var popup = window.open(url, 'credgate-oauth', 'popup,width=560,height=720');
      if (!popup) { window.location.href = url; }
    });
  });
  window.addEventListener('message', function (event) {
    if (event.origin !== window.location.origin || !event.data || event.data.source !== 'credgate') { return; }
    var result = event.data.result === 'success' ? 'success' : 'error';
    var params = new URLSearchParams({ result: result });
    if (event.data.credential_id) { params.set('credential_id', event.data.credential_id); }
    if (event.data.code) { params.set('code', event.data.code); }
    var path = window.location.pathname;
    if (path.indexOf('/connect') === 0) {
      window.location.href = '/connect/done?' + params.toString();
    } else if (path.indexOf('/manage/credentials/') === 0) {
      window.location.href = path + '?' + params.toString();
    }
  });

  // The end of a connect journey: tell the opener, or go back.
  var done = document.getElementById('done');
  if (done) {
    var message = JSON.parse(done.getAttribute('data-message'));
    var origins = JSON.parse(done.getAttribute('data-origins'));
    var back = done.getAttribute('data-return-to');
    if (window.opener && origins.length > 0) {
      origins.forEach(function (origin) {
        try { window.opener.postMessage(message, origin); } catch (e) { /* another origin */ }
      });
      window.close();
    } else if (back) {
      window.location.replace(back);
    }
  }

  // Delete selected (N).
  var bulk = document.getElementById('delete-selected');
  if (bulk) {
    var boxes = document.querySelectorAll('input[name="ids"]');
    var update = function () {
      var n = document.querySelectorAll('input[name="ids"]:checked').length;
      bulk.textContent = 'Delete selected (' + n + ')';
      bulk.disabled = n === 0;
    };
    boxes.forEach(function (box) { box.addEventListener('change', update); });
    var all = document.getElementById('select-all');
    if (all) {
      all.addEventListener('change', function () {
        boxes.forEach(function (box) { box.checked = all.checked; });
        update();
      });
    }
    update();
  }

  // The page's handlers are in place (tests wait for this before clicking).
  document.documentElement.setAttribute('data-ready', '1');
})();
