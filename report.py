"""
How eval.py reports its results: the markdown table it prints, with the numbers others published under it for the
standard test sets (recognised by their pixels), and the evaluation page of `python eval.py ... --html DIR`.

DIR/index.html is one self-contained page (no network, no CDN; it opens from file://) with the images beside it in
DIR/images/:

- the results table, as eval.py prints it (with the paper's rows);
- for each test image, every model's output, bicubic and the HR image: a before/after slider between any two of
  them, and a synchronized zoom of one region in all of them (the image's most detailed crop by default; click the
  comparison to move it), each with its PSNR / SSIM under it;
- keys: j / k next / previous image, Left / Right move the slider, [ and ] change the right-hand image, z zooms in;
- images load lazily (BSD100 x 4 models is 500 images), as the reader scrolls.

The page's numbers are eval.py's rows (the same as its --csv), written into the page as JSON. Every file of the page
is planned (outputs.OutputPlan) before the evaluation starts, named by outputs.file_names: two test sets, images or
models never share a file, whatever their names.
"""

import hashlib
import html
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from degradations import degrades
from images import load_image
from outputs import file_names
from utils import ImageLoadError, convert_image, crop_to_multiple

# ---------------------------------------------------------------------------------------------------------------
# The results table

STANDARD_TEST_SETS = ('Set5', 'Set14', 'BSD100')  # the columns of the published numbers, in this order
# The standard test sets by their pixels, whatever their file names, formats or order: (image count,
# test_set_digest), computed on ../shared/data. BSD100's 481x321 originals and the 480x320 crops give one digest.
STANDARD_DIGESTS = {
    'Set5': (5, 'faf5daeac51e2826fa4adb51e5a12d1e5fac56081af237c8af677a13f54a3fd0'),
    'Set14': (14, '90854ef616ac07e9610d57d50fa9e70d84d15bf48961c7c4cf2721a0dfa31c14'),
    'BSD100': (100, 'aef1460f9449894e2437aef58130896c8ad06738c28d118bd9385389efc566b0'),
}

# (PSNR, SSIM) at x4 that others published, printed under ours (our own bicubic values are in the README)
REFERENCES = {
    'paper': ('Ledig et al. 2017, Table 2', {  # their SSIM came from another implementation: compare PSNR first
        'bicubic': {'Set5': (28.43, 0.8211), 'Set14': (25.99, 0.7486), 'BSD100': (25.94, 0.6935)},
        'srresnet': {'Set5': (32.05, 0.9019), 'Set14': (28.49, 0.8184), 'BSD100': (27.58, 0.7620)},
        'srgan': {'Set5': (29.40, 0.8472), 'Set14': (26.02, 0.7397), 'BSD100': (25.16, 0.6688)}}),
    'tutorial': ("the tutorial's README (its protocol)", {
        'srresnet': {'Set5': (31.927, 0.902), 'Set14': (28.588, 0.799), 'BSD100': (27.587, 0.756)},
        'srgan': {'Set5': (29.719, 0.859), 'Set14': (26.509, 0.729), 'BSD100': (25.531, 0.678)}}),
}
KIND_NAMES = {'bicubic': 'bicubic', 'srresnet': 'SRResNet', 'srgan': 'SRGAN'}
ENSEMBLE_MARK = ' + self-ensemble'  # ends the label of a model's self-ensemble row (--self-ensemble)
SET_ALIASES = {'set5': 'Set5', 'set14': 'Set14', 'bsd100': 'BSD100', 'b100': 'BSD100', 'bsds100': 'BSD100'}


def markdown_table(models, columns, rows, pairs):
    """columns: (test set name, the standard set it holds or None), one per column; pairs: eval.TestPairs, how the
    LR images were made. Mean PSNR / SSIM per model and test set, a mean over fewer images than the set holds marked
    '(n of N images)'; then the published numbers for the kinds of model present, in the columns of the standard
    test sets (not for degraded LR: they were measured on clean LR)."""
    names = [name for name, _ in columns]
    degraded = '' if not degrades(pairs.degrade) else f', --degrade {pairs.degrade}'
    lines = [f'| model | scale | {" | ".join(f"{name} PSNR / SSIM" for name in names)} | s / image | measured by |',
             '|---|---|' + '---|' * len(names) + '---|---|']
    for model in models:
        mine = [r for r in rows if r['model'] == model.label and r['scale'] == model.scaling_factor]
        cells = ' | '.join(mean_cell([r for r in mine if r['dataset'] == name]) for name in names)
        seconds = [r['seconds'] for r in mine if not r['skipped']]
        ensemble = model.upscaler is not None and model.upscaler.self_ensemble
        by = 'this eval.py' + (' --self-ensemble (the mean over 8 flips / rotations)' if ensemble else '')
        lines.append(f'| {row_label(model)} | x{model.scaling_factor} | {cells} | '
                     f'{f"{np.mean(seconds):.3f}" if seconds else "-"} | {by}, --protocol {pairs.protocol}, '
                     f'{pairs.lr_kernel} LR{degraded} |')
    if degrades(pairs.degrade):
        return '\n'.join(lines)
    return '\n'.join(lines + published_rows(models, [standard for _, standard in columns], pairs.protocol))


def row_label(model):
    """A model's name in the table: its label, what it is ('SRResNet', 'SRGAN-MSE') and, for a self-ensemble row,
    '+ self-ensemble' last: 'runs/x.pt (SRResNet) + self-ensemble'."""
    if model.kind == 'bicubic':
        return model.label
    ensemble = model.upscaler.self_ensemble
    variant = f'-{model.content_loss.upper()}' if model.content_loss else ''  # SRGAN-MSE, SRGAN-VGG54
    name = model.label.removesuffix(ENSEMBLE_MARK) if ensemble else model.label
    return f'{name} ({KIND_NAMES[model.kind]}{variant}){ENSEMBLE_MARK if ensemble else ""}'


def mean_cell(rows):
    """'PSNR / SSIM', the means over `rows` (one model, one test set), with '(n of N images)' when some were
    skipped: such a mean is not the test set's."""
    done = [r for r in rows if not r['skipped']]
    cell = f'{np.mean([r["psnr"] for r in done]):.2f} / {np.mean([r["ssim"] for r in done]):.4f}' if done else '-'
    return cell if len(done) == len(rows) else f'{cell} ({len(done)} of {len(rows)} image{"s" * (len(rows) > 1)})'


def published_rows(models, standard_sets, protocol):
    """Table rows of the numbers published at x4 for the kinds of model present, in the columns whose test set
    is a standard one (standard_sets: its name or None per column)."""
    if not any(standard_sets):
        return []
    kinds = [kind for kind in KIND_NAMES if any(m.kind == kind and m.scaling_factor == 4 for m in models)]
    lines = []
    for source in ('paper', 'tutorial') if protocol == 'tutorial' else ('paper',):
        who, table = REFERENCES[source]
        for kind in [kind for kind in kinds if kind in table]:
            values = [table[kind].get(name) for name in standard_sets]
            cells = ' | '.join(f'{v[0]:.2f} / {v[1]:.4f}' if v else '-' for v in values)
            lines.append(f'| *{KIND_NAMES[kind]} ({source})* | x4 | {cells} | | {who} |')
    return lines


def test_set_digest(paths):
    """sha256 of a test set's pixels as they are measured at x4 (8-bit RGB, cropped top-left to a multiple of 4),
    image by image, sorted: the same images give the same digest whatever their file names, formats or order.
    None when an image cannot be read."""
    digests = []
    for path in paths:
        try:
            img = crop_to_multiple(load_image(path), 4)  # PIL RGB
        except ImageLoadError:
            return None
        digests.append(hashlib.sha256(f'{img.width}x{img.height}'.encode() + img.tobytes()).hexdigest())
    return hashlib.sha256(''.join(sorted(digests)).encode()).hexdigest()


def standard_set(name, paths):
    """'Set5', 'Set14' or 'BSD100' when `paths` hold that standard test set, by its pixels, else None: what the
    published numbers were measured on. A set named like one that holds other images gets a note saying so."""
    for standard, (count, digest) in STANDARD_DIGESTS.items():
        if len(paths) == count and test_set_digest(paths) == digest:
            return standard
    if name.lower() in SET_ALIASES:
        print(f'note: {name} is not the standard {SET_ALIASES[name.lower()]} (other images), so the published '
              f'numbers are not printed beside it', file=sys.stderr)
    return None


# ---------------------------------------------------------------------------------------------------------------
# The evaluation page

ZOOM_FRACTION = 0.25  # the zoomed region's side, as a fraction of the image's shorter side
MIN_ZOOM_SIDE = 24  # px


def most_detailed_region(hr_img, side):
    """(3, H, W) uint8 HR -> (left, top) of the side x side square with the most detail: the largest sum of
    gradient magnitudes of the luma, found with an integral image (every position, O(H W))."""
    y = convert_image(hr_img.double(), '[0, 255]', 'y-channel')  # (H, W)
    gradient = torch.zeros_like(y)
    gradient[:, 1:] += (y[:, 1:] - y[:, :-1]).abs()
    gradient[1:, :] += (y[1:, :] - y[:-1, :]).abs()
    integral = torch.nn.functional.pad(gradient.cumsum(0).cumsum(1), (1, 0, 1, 0))  # (H + 1, W + 1)
    sums = (integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side])
    top, left = np.unravel_index(int(sums.argmax()), tuple(sums.shape))
    return int(left), int(top)


class EvalPage:
    """Collects what eval.py measures, image by image, then writes the page. Every file is planned first: the page
    when it is made, its images by plan_images once the models and test images are known, all before the
    evaluation. Images are saved as they come (PNG, lossless: the artefacts are what one looks for), so memory stays
    flat on BSD100."""

    def __init__(self, folder, plan, flag='--html'):
        """folder: where the page goes (folder/index.html, folder/images/...); plan: the command's
        outputs.OutputPlan, which refuses an existing index.html without --overwrite, a folder inside a test
        folder, ..."""
        self.folder, self.plan, self.flag = Path(folder), plan, flag
        plan.folder(self.folder, flag)
        self.index = plan.file(self.folder / 'index.html', flag, formats=('.html',))
        self.files = {}  # (dataset, image name, scale) -> (HR file, {model label: SR file}), relative to folder
        self.images = {}  # (dataset, image name, scale) -> what the page shows of it: sizes, HR, zoom

    def plan_images(self, images):
        """images: (dataset, image name, scale, model labels) for every image the page shows. Plans its files,
        images/<dataset>/x<scale>/<image>/<model>.png and HR.png, each name from file_names."""
        images = list(images)
        datasets = file_names([dataset for dataset, _, _, _ in images])
        names = file_names([image for _, image, _, _ in images])
        models = file_names([label for _, _, _, labels in images for label in labels])
        for dataset, image, scale, labels in images:
            folder = Path('images', datasets[dataset], f'x{scale}', names[image])
            files = (folder / 'HR.png', {label: folder / f'{models[label]}.png' for label in labels})
            for path in [files[0], *files[1].values()]:
                self.plan.file(self.folder / path, self.flag, formats=('.png',))
            self.files[dataset, image, scale] = files

    def add(self, row, sr_img, hr_img):
        """One model's result on one image: row as eval.py's CSV row; sr_img (3, H, W) in [-1, 1]; hr_img (3, H, W)
        uint8. The HR image and its zoom region are kept once per image."""
        key = (row['dataset'], row['image'], row['scale'])
        hr_path, sr_paths = self.files[key]
        if key not in self.images:
            self._save(convert_image(hr_img.double(), '[0, 255]', '[-1, 1]'), hr_path)
            height, width = hr_img.shape[1:]
            side = min(max(MIN_ZOOM_SIDE, round(min(height, width) * ZOOM_FRACTION)), height, width)
            left, top = most_detailed_region(hr_img, side)
            self.images[key] = {'dataset': row['dataset'], 'image': row['image'], 'scale': row['scale'],
                                'width': width, 'height': height, 'hr': hr_path.as_posix(), 'zoom': [left, top, side]}
        self._save(sr_img, sr_paths[row['model']])

    def _save(self, img, path):
        with self.plan.write(self.folder / path) as tmp_path:
            convert_image(img.float(), '[-1, 1]', 'pil').save(tmp_path, compress_level=1)

    def cards(self, rows):
        """The page's data: per image saved, its panels (the models' outputs with their numbers), in the rows'
        order. rows: eval.py's final rows, so a model left out of the results is left out of the page too."""
        cards = {}
        for row in rows:
            key = (row['dataset'], row['image'], row['scale'])
            if key in self.images and row['psnr'] is not None:
                card = cards.setdefault(key, {**self.images[key], 'panels': []})
                card['panels'].append({'model': row['model'], 'kind': row['kind'],
                                       'src': self.files[key][1][row['model']].as_posix(),
                                       # an SR equal to the HR (a flat image) is inf dB: JSON has no Infinity
                                       'psnr': row['psnr'] if math.isfinite(row['psnr']) else 'inf',
                                       'ssim': row['ssim']})
        return list(cards.values())

    def write(self, title, notes, table_markdown, rows):
        """Write index.html: the title, notes (lines of text, e.g. the protocol), the results table and, per image,
        the panels of `rows` (see cards). -> its path."""
        page = (PAGE.replace('@TITLE@', html.escape(title))
                .replace('@NOTES@', ''.join(f'<p>{html.escape(line)}</p>' for line in notes))
                .replace('@TABLE@', markdown_to_html(table_markdown))
                .replace('@DATA@', json.dumps(self.cards(rows), allow_nan=False).replace('</', '<\\/')))
        with self.plan.write(self.index) as tmp_path:
            with open(tmp_path, 'w', encoding='utf-8') as f:
                f.write(page)
        return self.index


def markdown_to_html(table):
    """eval.py's markdown table -> an HTML table (cells escaped; *italic* rows, the published numbers, kept so)."""
    rows = [[cell.strip() for cell in line.strip().strip('|').split('|')] for line in table.strip().splitlines()]
    head, body = rows[0], rows[2:]  # rows[1] is the |---| line

    def cell(text, tag):
        italic = text.startswith('*') and text.endswith('*') and len(text) > 1
        text = html.escape(text.strip('*') if italic else text)
        return f'<{tag}>{f"<em>{text}</em>" if italic else text}</{tag}>'

    return ('<table id="results"><thead><tr>' + ''.join(cell(c, 'th') for c in head) + '</tr></thead><tbody>'
            + ''.join('<tr>' + ''.join(cell(c, 'td') for c in row) + '</tr>' for row in body) + '</tbody></table>')


PAGE = r'''<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@TITLE@</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 1400px; padding: 16px; color: #222; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  p { margin: 2px 0; color: #555; }
  table#results { border-collapse: collapse; margin: 12px 0 20px; }
  #results th, #results td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
  #results em { color: #666; }
  .keys { color: #666; font-size: 13px; }
  .card { border-top: 1px solid #ddd; padding: 14px 0; }
  .card:focus-within, .card.current { background: #fafafa; }
  .card h2 { font-size: 15px; margin: 0 0 6px; }
  .row { display: flex; gap: 16px; align-items: flex-start; flex-wrap: wrap; }
  .compare { position: relative; cursor: crosshair; user-select: none; line-height: 0; max-width: 640px; }
  .compare img { display: block; width: 100%; height: auto; image-rendering: auto; }
  .compare img.right { position: absolute; left: 0; top: 0; }
  .compare .divider { position: absolute; top: 0; bottom: 0; width: 2px; background: #fff; box-shadow: 0 0 2px #000; }
  .compare .box { position: absolute; border: 2px solid #ff3b30; pointer-events: none; }
  .compare .tag { position: absolute; top: 4px; line-height: 1.2; font-size: 12px; background: rgba(0,0,0,.6);
                  color: #fff; padding: 1px 5px; }
  .controls { display: flex; gap: 8px; align-items: center; margin: 6px 0; line-height: 1.4; }
  .controls input[type=range] { flex: 1; }
  .zooms { display: flex; flex-wrap: wrap; gap: 8px; }
  .zoom { width: 160px; }
  .zoom .view { width: 160px; height: 160px; overflow: hidden; position: relative; background: #eee; }
  .zoom .view img { position: absolute; image-rendering: pixelated; max-width: none; }
  .zoom .label { font-size: 12px; overflow-wrap: anywhere; }
  .zoom .numbers { font-size: 12px; font-variant-numeric: tabular-nums; color: #333; }
</style>
</head>
<body>
<h1>@TITLE@</h1>
@NOTES@
@TABLE@
<p class="keys">Keys: <b>j</b> / <b>k</b> next / previous image, <b>&larr;</b> / <b>&rarr;</b> move the slider,
<b>[</b> / <b>]</b> change the right-hand image, <b>z</b> / <b>Z</b> zoom in / out. Click the comparison to zoom
there. Under each zoom: PSNR (dB) / SSIM of that image, eval.py's numbers.</p>
<div id="cards"></div>
<script id="data" type="application/json">@DATA@</script>
<script>
'use strict';
const images = JSON.parse(document.getElementById('data').textContent);
const cards = document.getElementById('cards');
let current = 0;

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'text') node.textContent = v; else node.setAttribute(k, v);
  }
  for (const child of children || []) node.appendChild(child);
  return node;
}

function lazyImg(src, cls) {  // loading=lazy, set before src: the browser fetches it when it nears the viewport
  return el('img', {loading: 'lazy', decoding: 'async', class: cls || '', alt: '', src: src});
}

function makeCard(info, index) {
  // every panel: the models' outputs (bicubic among them) in eval.py's order, then the HR image
  const panels = info.panels.concat([{model: 'HR', kind: 'hr', src: info.hr, psnr: null, ssim: null}]);
  const card = el('section', {class: 'card', id: 'card-' + index, 'data-index': index});
  const title = `${info.dataset} / ${info.image}  (x${info.scale}, ${info.width}x${info.height} HR)`;
  card.appendChild(el('h2', {text: title}));
  const left = panels.findIndex(p => p.kind === 'bicubic');
  const firstModel = panels.findIndex(p => p.kind !== 'bicubic' && p.kind !== 'hr');
  const state = {panels, a: left >= 0 ? left : 0, b: firstModel, split: 50, zoom: info.zoom.slice()};
  if (state.b < 0) state.b = panels.length - 1;

  const imgA = lazyImg(panels[state.a].src, 'left'), imgB = lazyImg(panels[state.b].src, 'right');
  const divider = el('div', {class: 'divider'}), box = el('div', {class: 'box'});
  const tagA = el('span', {class: 'tag', style: 'left:4px'}), tagB = el('span', {class: 'tag', style: 'right:4px'});
  const compare = el('div', {class: 'compare', tabindex: '0'}, [imgA, imgB, divider, box, tagA, tagB]);
  const options = () => panels.map((p, i) => el('option', {value: i, text: p.model}));
  const selA = el('select', {'aria-label': 'left image'}, options());
  const selB = el('select', {'aria-label': 'right image'}, options());
  const slider = el('input', {type: 'range', min: 0, max: 100, step: 1, value: state.split, 'aria-label': 'slider'});
  const controls = el('div', {class: 'controls'}, [selA, slider, selB]);
  const zooms = el('div', {class: 'zooms'});
  panels.forEach((p, i) => {
    const fixed = (value, digits) => typeof value === 'number' ? value.toFixed(digits) : value;  // 'inf'
    const numbers = p.psnr === null ? 'reference' : `${fixed(p.psnr, 2)} / ${fixed(p.ssim, 4)}`;
    zooms.appendChild(el('div', {class: 'zoom'}, [
      el('div', {class: 'view'}, [lazyImg(p.src)]),
      el('div', {class: 'label', text: p.model}),
      el('div', {class: 'numbers', text: numbers, 'data-model': p.model,
                 'data-psnr': p.psnr === null ? '' : p.psnr, 'data-ssim': p.ssim === null ? '' : p.ssim})]));
  });
  card.appendChild(el('div', {class: 'row'}, [el('div', {}, [compare, controls]), zooms]));

  function render() {
    selA.value = state.a; selB.value = state.b; slider.value = state.split;
    if (imgA.getAttribute('src') !== panels[state.a].src) imgA.src = panels[state.a].src;
    if (imgB.getAttribute('src') !== panels[state.b].src) imgB.src = panels[state.b].src;
    imgB.style.clipPath = `inset(0 0 0 ${state.split}%)`;  // the right-hand image, shown right of the divider
    divider.style.left = `calc(${state.split}% - 1px)`;
    tagA.textContent = panels[state.a].model; tagB.textContent = panels[state.b].model;
    const [x, y, side] = state.zoom;
    Object.assign(box.style, {left: 100 * x / info.width + '%', top: 100 * y / info.height + '%',
                              width: 100 * side / info.width + '%', height: 100 * side / info.height + '%'});
    const scale = 160 / side;
    for (const img of zooms.querySelectorAll('.view img')) {
      Object.assign(img.style, {width: info.width * scale + 'px', height: info.height * scale + 'px',
                                left: -x * scale + 'px', top: -y * scale + 'px'});
    }
  }
  selA.addEventListener('change', () => { state.a = +selA.value; render(); });
  selB.addEventListener('change', () => { state.b = +selB.value; render(); });
  slider.addEventListener('input', () => { state.split = +slider.value; render(); });
  compare.addEventListener('click', event => {  // centre the zoomed region where the reader clicked
    const rect = compare.getBoundingClientRect(), side = state.zoom[2];
    const cx = (event.clientX - rect.left) / rect.width * info.width;
    const cy = (event.clientY - rect.top) / rect.height * info.height;
    state.zoom[0] = Math.round(Math.min(Math.max(cx - side / 2, 0), info.width - side));
    state.zoom[1] = Math.round(Math.min(Math.max(cy - side / 2, 0), info.height - side));
    render();
  });
  card.state = state; card.render = render;
  render();
  return card;
}

images.forEach((info, i) => cards.appendChild(makeCard(info, i)));

function select(index) {
  const all = cards.children;
  if (!all.length) return;
  current = Math.max(0, Math.min(all.length - 1, index));
  for (const card of all) card.classList.toggle('current', +card.dataset.index === current);
  all[current].scrollIntoView({block: 'start'});
}

document.addEventListener('keydown', event => {
  if (event.target.tagName === 'SELECT' || event.metaKey || event.ctrlKey || event.altKey) return;
  const card = cards.children[current];
  if (!card) return;
  const state = card.state;
  if (event.key === 'j') select(current + 1);
  else if (event.key === 'k') select(current - 1);
  else if (event.key === 'ArrowLeft' || event.key === 'ArrowRight') {
    if (event.target.type === 'range') return;  // the focused slider moves itself
    state.split = Math.max(0, Math.min(100, state.split + (event.key === 'ArrowLeft' ? -5 : 5)));
  } else if (event.key === ']' || event.key === '[') {
    state.b = (state.b + (event.key === ']' ? 1 : state.panels.length - 1)) % state.panels.length;
  } else if (event.key === 'z' || event.key === 'Z') {
    const [x, y, side] = state.zoom, info = images[current];
    const wanted = event.key === 'z' ? side / 1.5 : side * 1.5;
    const next = Math.round(Math.min(Math.max(wanted, 8), info.width, info.height));
    state.zoom = [Math.min(Math.max(0, Math.round(x + (side - next) / 2)), info.width - next),
                  Math.min(Math.max(0, Math.round(y + (side - next) / 2)), info.height - next), next];
  } else return;
  event.preventDefault();
  card.render();
});
document.addEventListener('focusin', event => {
  const card = event.target.closest && event.target.closest('.card');
  if (card) current = +card.dataset.index;
});
</script>
</body>
</html>
'''
