#!/usr/bin/env node
// onnxcam from Node.js: list a server's models, explain images, write heatmap PNGs.
//
//   node explain.js models  [--server HOST:PORT]
//   node explain.js explain [--server HOST:PORT] [--model NAME] [--method GRADCAM ...] [--out DIR]
//                           [--top-k 5] [--timeout S] [--stream] [--json] IMAGE...
//
// One image is sent with Explain, several with ExplainStream (or always with --stream). No call has
// a deadline unless --timeout is given. --json prints one JSON object per image instead of text.
'use strict';

const fs = require('fs');
const path = require('path');
const { ExplainerClient, statusName } = require('./onnxcam');

const USAGE = `usage: node explain.js models [--server HOST:PORT]
       node explain.js explain [--server HOST:PORT] [--model NAME] [--method GRADCAM ...] [--out DIR]
                               [--top-k N] [--timeout S] [--stream] [--json] IMAGE...`;

function parse(argv) {
  const args = { command: argv[0], server: 'localhost:50051', model: '', methods: [], out: '.', topK: 5,
    timeoutS: 0, stream: false, json: false, images: [] };
  const value = (i, flag) => {
    if (i >= argv.length) throw new Error(`${flag} needs a value`);
    return argv[i];
  };
  for (let i = 1; i < argv.length; i += 1) {
    const flag = argv[i];
    if (flag === '--server') args.server = value(++i, flag);
    else if (flag === '--model') args.model = value(++i, flag);
    else if (flag === '--method') args.methods.push(value(++i, flag).toUpperCase());
    else if (flag === '--out') args.out = value(++i, flag);
    else if (flag === '--top-k') args.topK = Number(value(++i, flag));
    else if (flag === '--timeout') args.timeoutS = Number(value(++i, flag));
    else if (flag === '--stream') args.stream = true;
    else if (flag === '--json') args.json = true;
    else if (flag.startsWith('--')) throw new Error(`unknown option ${flag}`);
    else args.images.push(flag);
  }
  if (!['models', 'explain'].includes(args.command)) throw new Error(`unknown command ${args.command || '(none)'}`);
  if (args.command === 'explain' && !args.images.length) throw new Error('explain needs at least one image');
  if (!args.methods.length) args.methods = ['GRADCAM'];
  return args;
}

// Writes each heatmap's PNG next to the others; returns what was written, for the summary.
function writeHeatmaps(response, image, outDir) {
  const stem = path.basename(image, path.extname(image));
  return response.heatmaps.map((heatmap) => {
    const file = path.join(outDir, `${stem}.${heatmap.method.toLowerCase()}.${heatmap.target}.png`);
    fs.writeFileSync(file, heatmap.heatmap_png);
    return { method: heatmap.method, target: heatmap.target, target_label: heatmap.target_label, file,
      png_bytes: heatmap.heatmap_png.length };
  });
}

function report(response, image, args) {
  if (response.error) {
    const failure = { image, error: { code: statusName(response.error.code), message: response.error.message } };
    if (args.json) console.log(JSON.stringify(failure));
    else console.log(`${image}: ${failure.error.code}: ${failure.error.message}`);
    return false;
  }
  const heatmaps = writeHeatmaps(response, image, args.out);
  const predictions = response.predictions.map((p) => ({ index: p.index, label: p.label, score: p.score }));
  if (args.json) {
    console.log(JSON.stringify({ image, model: response.model, predictions, heatmaps, skipped: response.skipped,
      total_ms: response.timing.total_ms }));
    return true;
  }
  console.log(`${image} (${response.model}, ${response.timing.total_ms.toFixed(1)} ms)`);
  predictions.forEach((p) => console.log(`  ${(100 * p.score).toFixed(1).padStart(5)}%  ${p.index}  ${p.label}`));
  heatmaps.forEach((h) => console.log(`  ${h.method} for ${h.target_label}: ${h.file}`));
  response.skipped.forEach((s) => console.log(`  skipped ${s.method}: ${s.reason} (${s.detail})`));
  return true;
}

async function main(argv) {
  let args;
  try {
    args = parse(argv);
  } catch (error) {
    console.error(`${error.message}\n${USAGE}`);
    return 2;
  }
  const client = new ExplainerClient(args.server, { timeoutS: args.timeoutS });
  try {
    const models = await client.listModels();
    if (args.command === 'models') {
      models.forEach((m) => console.log(args.json ? JSON.stringify(m)
        : `${m.name}: ${m.num_classes} classes, ${m.input_height}x${m.input_width}, ${m.methods.join(' ')}`));
      return 0;
    }
    const model = args.model || (models[0] && models[0].name);
    if (!model) throw new Error('the server has no models');
    fs.mkdirSync(args.out, { recursive: true });
    const options = { methods: args.methods, top_k: args.topK, heatmap_png: true };
    let ok = true;
    if (args.images.length === 1 && !args.stream) {
      ok = report(await client.explain(args.images[0], model, options), args.images[0], args);
    } else {
      const responses = await client.explainStream(args.images, model, options);
      responses.forEach((response) => {
        ok = report(response, args.images[Number(response.request_id)], args) && ok;
      });
    }
    return ok ? 0 : 1;
  } catch (error) {
    const code = error.code === undefined ? 'ERROR' : statusName(error.code);
    if (args.json) console.log(JSON.stringify({ error: { code, message: error.details || error.message } }));
    else console.error(`${code}: ${error.details || error.message}`);
    return 1;
  } finally {
    client.close();
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
}

module.exports = { main, parse };
