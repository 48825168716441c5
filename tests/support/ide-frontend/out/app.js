// The test IDE's bundle: once the page and its resources have loaded, it writes what it
// found into the DOM, where the test reads it back (chromium --dump-dom).
(function () {
  function report() {
    var title = document.getElementById("title");
    var logo = document.getElementById("logo");
    var css = getComputedStyle(title).color === "rgb(10, 120, 200)";
    var img = logo.complete && logo.naturalWidth === 16;
    document.getElementById("marker").textContent = "BLOBSERVE-MARKER css=" + css + " img=" + img;
    document.getElementById("inline").textContent = "ide=" + window.IDE_CONFIG.ide + " supervisor=" + window.IDE_CONFIG.supervisor;
    document.getElementById("build").textContent = "build=__BUILD_ID__";
  }
  if (document.readyState === "complete") {
    report();
  } else {
    window.addEventListener("load", report);
  }
})();
