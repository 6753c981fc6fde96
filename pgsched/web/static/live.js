// Live figures without a build step: fetch the server-rendered fragment of this page and swap it in.
(function () {
  var live = document.getElementById("live");
  if (!live) return;
  var every = parseInt(live.dataset.refreshMs, 10) || 2000;
  function refresh() {
    if (document.hidden) return;
    var url = window.location.pathname + "?partial=1";
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) { live.innerHTML = html; live.classList.remove("stale"); })
      .catch(function () { live.classList.add("stale"); });
  }
  setInterval(refresh, every);
})();
