"""The report's interactive 3D viewer as HTML: NiiVue inlined, one case at a time, no network.

One viewer per report (a page may hold only a few WebGL contexts; one canvas and a case
selector keep every case reachable): the case's four modalities (one shown, switchable), the
expert label and the prediction as label overlays in the report's colours with a legend,
opacity, axial / coronal / sagittal / multi-planar (with a 3-D rendering) / 3-D
views, the crosshair's voxel (in the original files' indices), position in mm and the value of
every volume there, and the case's metrics beside. Each case's data is its own
``<script type="application/json">`` block, parsed only when the case is shown.

The page tells a test where it stands: ``#gv`` gets ``data-state="ready"`` (and ``data-case``)
once a case is drawn and ``data-state="error"`` with the message in ``#gv-status`` on any failure,
which it also logs with ``console.error``.
"""
from __future__ import annotations

import functools
import html
import json
from importlib import resources

from glioseg.evaluation.viewer import CROP_NOTE, ViewerCase

ASSETS = ("glioseg.evaluation", "assets/niivue")
VIEWS = (("axial", 0), ("coronal", 1), ("sagittal", 2), ("multi-planar", 3), ("3D", 4))
CROSSHAIR_RGBA = (1.0, 0.0, 1.0, 1.0)  # magenta: no label colour is near it
CSS = """
#gv{display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}
#gv-canvas-box{width:760px;height:560px;background:#000;position:relative}
#gv-side{font-size:12px;max-width:480px}#gv-side label{margin-right:10px}
#gv-controls button{margin:0 4px 4px 0}#gv-location{font-family:monospace;white-space:pre-wrap;min-height:3em}
.gv-swatch{display:inline-block;width:12px;height:12px;margin-right:6px;border:1px solid #555;vertical-align:middle}
"""


@functools.lru_cache(maxsize=1)
def niivue_script() -> str:
    """The vendored NiiVue UMD build (assets/niivue/niivue.umd.js; see its VERSION and LICENSE)."""
    return resources.files(ASSETS[0]).joinpath(ASSETS[1], "niivue.umd.js").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def niivue_version() -> str:
    text = resources.files(ASSETS[0]).joinpath(ASSETS[1], "VERSION").read_text(encoding="utf-8")
    return json.loads(text)["version"]


def _json_block(element_id: str, data) -> str:
    # "</" would end the <script> element early; "<\/" is the same JSON string.
    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def _controls(cases: list[ViewerCase]) -> str:
    options = "".join(f'<option value="{k}">{html.escape(c.case_id)}</option>' for k, c in enumerate(cases))
    views = "".join(f'<button type="button" data-view="{code}">{name}</button>' for name, code in VIEWS)
    return (f'<div id="gv-controls"><label>case <select id="gv-case">{options}</select></label> '
            '<span id="gv-modalities"></span><br>' + views +
            '<br><span id="gv-overlays"></span> <label>opacity <input id="gv-opacity" type="range" min="0" '
            'max="1" step="0.05" value="0.5"></label></div>')


def viewer_section(cases: list[ViewerCase], convention: str = "radiological") -> str:
    """The viewer's HTML (heading, controls, canvas, data, NiiVue and its driver); "" without cases."""
    if not cases:
        return ""
    index = {"cases": [c.case_id for c in cases], "radiological": convention == "radiological",
             "crosshair": list(CROSSHAIR_RGBA)}
    data = "".join(_json_block(f"gv-case-{k}", c.to_dict()) for k, c in enumerate(cases))
    note = (f"Interactive viewer (NiiVue {niivue_version()}, BSD-2-Clause, inlined: works offline). "
            "Click or drag to move the crosshair; scroll to change slice; in 3D drag to rotate. "
            f"{CROP_NOTE}")
    return (f"<style>{CSS}</style><h2>Viewer</h2>{_controls(cases)}"
            '<div id="gv" data-state="loading"><div id="gv-canvas-box"><canvas id="gv-canvas"></canvas></div>'
            '<div id="gv-side"><div id="gv-status">loading…</div><div id="gv-legend"></div>'
            '<div id="gv-location"></div><div id="gv-table"></div></div></div>'
            f'<p class="note">{html.escape(note)}</p>'
            f"{_json_block('gv-index', index)}{data}"
            f"<script>{niivue_script()}</script><script>{DRIVER}</script>")


# The page's own code: plain ES2017, no modules (a file:// page cannot import them).
DRIVER = r"""
(function () {
  "use strict";
  var root = document.getElementById("gv"), status = document.getElementById("gv-status");
  function fail(message) {
    root.dataset.state = "error";
    status.textContent = "Viewer error: " + message + " (the figures below do not need the viewer)";
    console.error("glioseg viewer: " + message);
  }
  window.addEventListener("error", function (e) { fail(e.message || String(e)); });
  window.addEventListener("unhandledrejection", function (e) { fail(String(e.reason && e.reason.message || e.reason)); });
  if (typeof niivue === "undefined") { fail("the NiiVue script did not run"); return; }
  var index = JSON.parse(document.getElementById("gv-index").textContent);
  var LABELS = ["reference", "prediction"], TITLES = {reference: "expert label", prediction: "prediction"};
  var nv = new niivue.Niivue({backColor: [0, 0, 0, 1], crosshairColor: index.crosshair, show3Dcrosshair: true,
    isRadiologicalConvention: index.radiological, multiplanarShowRender: niivue.SHOW_RENDER.ALWAYS,
    dragAndDropEnabled: false, isColorbar: false, loadingText: "", logLevel: "error"});
  var cur = null, opacity = 0.5;

  function esc(s) { var d = document.createElement("div"); d.textContent = String(s); return d.innerHTML; }
  function colormap(legend) {
    var cm = {R: [0], G: [0], B: [0], A: [0], I: [0], labels: ["background"]};
    legend.forEach(function (l) {
      cm.R.push(l.rgb[0]); cm.G.push(l.rgb[1]); cm.B.push(l.rgb[2]); cm.A.push(255); cm.I.push(l.value);
      cm.labels.push(l.name);
    });
    return cm;
  }
  function labelName(c, v) {
    var hit = c.data.legend.filter(function (l) { return l.value === v; })[0];
    return v === 0 ? "background" : hit ? hit.name : "?";
  }
  function applyOverlays() {
    nv.volumes.forEach(function (vol, i) {
      var m = cur.modalityOf[vol.id], lab = cur.labelOf[vol.id];
      if (m !== undefined) nv.setOpacity(i, m === cur.modality ? 1 : 0);
      if (lab !== undefined) nv.setOpacity(i, cur.shown[lab] ? opacity : 0);
    });
    nv.drawScene();
  }
  function showModality(name) {
    cur.modality = name;
    nv.setVolume(cur.images[name], 0);
    applyOverlays();
  }
  function location(d) {
    if (!cur || !d || !d.vox) return;
    var inv = cur.data.mm_to_voxel, mm = Array.from(d.mm).slice(0, 3);
    var vox = inv.slice(0, 3).map(function (row) {
      return Math.round(row[0] * mm[0] + row[1] * mm[1] + row[2] * mm[2] + row[3]);
    });
    var lines = ["voxel " + vox.join(", ") + " of " + cur.data.shape.join("×") + "   " +
                 mm.map(function (v) { return v.toFixed(1); }).join(", ") + " mm"];
    (d.values || []).forEach(function (v, i) {
      var vol = nv.volumes[i], lab = vol && cur.labelOf[vol.id], mod = vol && cur.modalityOf[vol.id];
      if (lab !== undefined) lines.push(TITLES[lab] + ": " + v.value + " " + labelName(cur, v.value));
      else if (mod !== undefined) lines.push(mod + ": " + Number(v.value).toPrecision(4));
    });
    document.getElementById("gv-location").textContent = lines.join("\n");
  }
  nv.onLocationChange = location;

  function sideTables(c) {
    document.getElementById("gv-legend").innerHTML = "<b>Labels</b><br>" + c.legend.map(function (l) {
      return '<span class="gv-swatch" style="background:rgb(' + l.rgb.join(",") + ')"></span>' +
             l.value + ": " + esc(l.name) + "<br>";
    }).join("");
    var t = c.table, head = t.header.map(function (h) { return "<th>" + esc(h) + "</th>"; }).join("");
    var rows = t.rows.map(function (r) {
      return "<tr>" + r.map(function (v) { return "<td>" + esc(v) + "</td>"; }).join("") + "</tr>";
    }).join("");
    document.getElementById("gv-table").innerHTML = "<b>" + esc(c.id) + "</b><table><tr>" + head + "</tr>" + rows + "</table>";
  }
  function buttons(c) {
    document.getElementById("gv-modalities").innerHTML = Object.keys(c.images).map(function (m) {
      return '<label><input type="radio" name="gv-modality" value="' + esc(m) + '"' +
             (m === cur.modality ? " checked" : "") + "> " + esc(m) + "</label>";
    }).join("");
    document.getElementById("gv-overlays").innerHTML = LABELS.filter(function (n) { return c.labels[n]; })
      .map(function (n) {
        return '<label><input type="checkbox" data-label="' + n + '" checked> ' + TITLES[n] + "</label>";
      }).join("");
  }

  async function loadCase(k) {
    root.dataset.state = "loading";
    status.textContent = "loading " + index.cases[k] + "…";
    var c = JSON.parse(document.getElementById("gv-case-" + k).textContent);
    var next = {data: c, images: {}, modalityOf: {}, labelOf: {}, shown: {}, modality: Object.keys(c.images)[0]};
    var volumes = [];
    for (var m of Object.keys(c.images)) {
      var im = await niivue.NVImage.loadFromBase64({base64: c.images[m], name: c.id + "_" + m + ".nii.gz"});
      next.images[m] = im; next.modalityOf[im.id] = m; volumes.push(im);
    }
    for (var n of LABELS) {
      if (!c.labels[n]) continue;
      var lab = await niivue.NVImage.loadFromBase64({base64: c.labels[n], name: c.id + "_" + n + ".nii.gz"});
      lab.setColormapLabel(colormap(c.legend));
      next.labelOf[lab.id] = n; next.shown[n] = true; volumes.push(lab);
    }
    while (nv.volumes.length) nv.removeVolume(nv.volumes[nv.volumes.length - 1]);
    cur = next;
    volumes.forEach(function (v) { nv.addVolume(v); });
    buttons(c); sideTables(c);
    applyOverlays();
    nv.scene.crosshairPos = nv.mm2frac(c.start_mm);
    nv.createOnLocationChange();
    nv.drawScene();
    status.textContent = c.id + ": " + Object.keys(c.images).length + " images, " +
      Object.keys(c.labels).length + " label map(s)";
    root.dataset.case = c.id;
    root.dataset.state = "ready";
  }

  document.getElementById("gv-case").addEventListener("change", function (e) {
    loadCase(Number(e.target.value)).catch(function (err) { fail(err.message || String(err)); });
  });
  document.getElementById("gv-controls").addEventListener("click", function (e) {
    if (e.target.dataset.view !== undefined) nv.setSliceType(Number(e.target.dataset.view));
  });
  document.getElementById("gv-controls").addEventListener("change", function (e) {
    var t = e.target;
    if (t.name === "gv-modality") showModality(t.value);
    else if (t.dataset.label) { cur.shown[t.dataset.label] = t.checked; applyOverlays(); }
  });
  document.getElementById("gv-opacity").addEventListener("input", function (e) {
    opacity = Number(e.target.value); applyOverlays();
  });
  nv.attachToCanvas(document.getElementById("gv-canvas"))
    .then(function () { nv.setSliceType(nv.sliceTypeMultiplanar); return loadCase(0); })
    .catch(function (err) { fail(err && err.message || String(err)); });
})();
"""
