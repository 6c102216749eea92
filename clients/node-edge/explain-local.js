#!/usr/bin/env node
// onnxcam on the device, without a server: run a model folder's explainer.onnx with onnxruntime-node,
// print the top-k classes and write each raw map (float32 [h, w] .npy, before ReLU/normalise/upsample).
//
//   node explain-local.js MODEL_FOLDER [--method gradcam ...] [--target N] [--top-k 5] [--out DIR]
//                         [--threads N] [--json] INPUT...
//
// MODEL_FOLDER is what `onnxcam export` writes (explainer.onnx + model.json: labels, input size and
// preprocessing). Each INPUT is already resized and cropped to the model's input size [H, W]:
//   *.npy  float32 [3, H, W] or [N, 3, H, W], C order, little-endian: preprocessed pixels, used as they are;
//   *.rgb  raw 8-bit RGB, H x W x 3 interleaved: normalised here with model.json's scale, mean and std,
//          exactly as the server does. ImageMagick makes one from a photo for the default model:
//          convert cat.jpg -resize 256x256^ -gravity center -extent 224x224 -depth 8 rgb:cat.rgb
//   other  raw float32 little-endian, N x 3 x H x W values (N >= 1), used as they are.
// All rows of all inputs go through one session.run (rows never influence each other). The target
// class is --target for every row, or each row's top-1 (the graph's target -1). Maps are written as
// DIR/<input>[-<row>].<method>.<target>.npy; --json prints one JSON object per row instead of text,
// with the logits and the maps' values too.
//
// npm ci --ignore-scripts is enough: the CPU binaries are in the onnxruntime-node package; its install
// script only downloads the CUDA/TensorRT providers (Linux x64) from NuGet.
'use strict';

const fs = require('fs');
const path = require('path');
const ort = require('onnxruntime-node');

const USAGE = `usage: node explain-local.js MODEL_FOLDER [--method gradcam ...] [--target N] [--top-k N] [--out DIR]
                            [--threads N] [--json] INPUT...`;

function parse(argv) {
  const args = { folder: '', methods: [], target: -1, topK: 5, out: '.', threads: 0, json: false, inputs: [] };
  const value = (i, flag) => {
    if (i >= argv.length) throw new Error(`${flag} needs a value`);
    return argv[i];
  };
  const integer = (text, flag, min) => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < min) throw new Error(`${flag} needs an integer >= ${min}, not ${text}`);
    return n;
  };
  for (let i = 0; i < argv.length; i += 1) {
    const flag = argv[i];
    if (flag === '--method') args.methods.push(value(++i, flag).toLowerCase());
    else if (flag === '--target') args.target = integer(value(++i, flag), flag, 0);
    else if (flag === '--top-k') args.topK = integer(value(++i, flag), flag, 1);
    else if (flag === '--out') args.out = value(++i, flag);
    else if (flag === '--threads') args.threads = integer(value(++i, flag), flag, 0);
    else if (flag === '--json') args.json = true;
    else if (flag.startsWith('--')) throw new Error(`unknown option ${flag}`);
    else if (!args.folder) args.folder = flag;
    else args.inputs.push(flag);
  }
  if (!args.folder) throw new Error('the model folder is missing');
  if (!args.inputs.length) throw new Error('at least one INPUT is needed');
  if (!args.methods.length) args.methods = ['gradcam'];
  return args;
}

// The header of a .npy file (format 1.0-3.0): dtype, order and shape; the data follows it.
function readNpy(file, buffer) {
  if (buffer.toString('latin1', 0, 6) !== '\x93NUMPY') throw new Error(`${file}: not a .npy file`);
  const major = buffer[6];
  const headerLength = major === 1 ? buffer.readUInt16LE(8) : buffer.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = buffer.toString('latin1', start, start + headerLength);
  const descr = /'descr':\s*'([^']+)'/.exec(header);
  const fortran = /'fortran_order':\s*(True|False)/.exec(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shape) throw new Error(`${file}: unreadable .npy header ${header}`);
  if (descr[1] !== '<f4' || fortran[1] !== 'False') {
    throw new Error(`${file}: needs float32 little-endian in C order (numpy: np.save(f, x.astype('<f4'))), ` +
      `not ${descr[1]}${fortran[1] === 'True' ? ' in Fortran order' : ''}`);
  }
  const dims = shape[1].split(',').filter((s) => s.trim()).map(Number);
  return { dims, data: buffer.subarray(start + headerLength) };
}

function writeNpy(file, values, dims) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${dims.join(', ')}${dims.length === 1 ? ',' : ''}), }`;
  header += ' '.repeat(63 - ((10 + header.length) % 64)) + '\n'; // the data starts on a 64-byte boundary
  const prefix = Buffer.alloc(10);
  prefix.write('\x93NUMPY', 0, 'latin1');
  prefix[6] = 1;
  prefix.writeUInt16LE(header.length, 8);
  const data = Buffer.from(values.buffer, values.byteOffset, values.byteLength); // little-endian hosts only
  fs.writeFileSync(file, Buffer.concat([prefix, Buffer.from(header, 'latin1'), data]));
}

function float32LE(bytes) {
  const out = new Float32Array(bytes.length / 4);
  for (let i = 0; i < out.length; i += 1) out[i] = bytes.readFloatLE(4 * i);
  return out;
}

// x * scale, then (x - mean) / std per channel, HWC -> CHW; each step rounded to float32 like numpy's.
function normalizeRgb(bytes, height, width, preprocess) {
  const f = Math.fround;
  const out = new Float32Array(3 * height * width);
  const scale = f(preprocess.scale);
  for (let c = 0; c < 3; c += 1) {
    const mean = f(preprocess.mean[c]);
    const std = f(preprocess.std[c]);
    for (let p = 0; p < height * width; p += 1) out[c * height * width + p] = f(f(f(bytes[3 * p + c] * scale) - mean) / std);
  }
  return out;
}

// One input file -> its rows of preprocessed pixels, each 3 * H * W float32 values.
function readInput(file, info) {
  const [height, width] = info.input_size;
  const row = 3 * height * width;
  const buffer = fs.readFileSync(file);
  const extension = path.extname(file).toLowerCase();
  let values;
  if (extension === '.rgb') {
    if (buffer.length !== height * width * 3) {
      throw new Error(`${file}: ${buffer.length} bytes; RGB at this model's ${height}x${width} needs ${height * width * 3}`);
    }
    values = normalizeRgb(buffer, height, width, info.preprocess);
  } else if (extension === '.npy') {
    const { dims, data } = readNpy(file, buffer);
    const tail = dims.slice(-3).join('x');
    if (!(dims.length === 3 || dims.length === 4) || tail !== `3x${height}x${width}`) {
      throw new Error(`${file}: shape [${dims}]; this model takes [3, ${height}, ${width}] or [N, 3, ${height}, ${width}]`);
    }
    if (data.length !== 4 * dims.reduce((a, b) => a * b, 1)) throw new Error(`${file}: data shorter or longer than [${dims}]`);
    values = float32LE(data);
  } else {
    if (buffer.length === 0 || buffer.length % (4 * row) !== 0) {
      throw new Error(`${file}: ${buffer.length} bytes is not N x 3 x ${height} x ${width} float32 values`);
    }
    values = float32LE(buffer);
  }
  const rows = [];
  for (let offset = 0; offset < values.length; offset += row) rows.push(values.subarray(offset, offset + row));
  return rows;
}

function topK(logits, k, labels) {
  const max = Math.max(...logits);
  const exps = logits.map((x) => Math.exp(x - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return logits.map((logit, index) => ({ index, label: labels[index] ?? String(index), score: exps[index] / sum, logit }))
    .sort((a, b) => b.logit - a.logit).slice(0, k);
}

async function main(argv) {
  let args;
  try {
    args = parse(argv);
  } catch (error) {
    console.error(`${error.message}\n${USAGE}`);
    return 2;
  }
  const info = JSON.parse(fs.readFileSync(path.join(args.folder, 'model.json'), 'utf8'));
  const unknown = args.methods.filter((m) => !info.methods.includes(m));
  if (unknown.length) {
    console.error(`${info.name} has no map ${unknown.join(', ')} in its graph; it has ${info.methods.join(', ')}`);
    return 2;
  }
  if (args.target >= info.num_classes) {
    console.error(`--target ${args.target} is out of range: ${info.name} has ${info.num_classes} classes`);
    return 2;
  }
  const rows = []; // [input file, row index in that file, pixels]
  for (const file of args.inputs) readInput(file, info).forEach((pixels, i, all) => rows.push([file, all.length > 1 ? i : -1, pixels]));

  const [height, width] = info.input_size;
  const pixels = new Float32Array(rows.length * 3 * height * width);
  rows.forEach(([, , values], i) => pixels.set(values, i * values.length));
  const options = { executionProviders: ['cpu'], graphOptimizationLevel: 'all' };
  if (args.threads) options.intraOpNumThreads = args.threads;
  const session = await ort.InferenceSession.create(path.join(args.folder, 'explainer.onnx'), options);
  const feeds = {
    pixels: new ort.Tensor('float32', pixels, [rows.length, 3, height, width]),
    target: new ort.Tensor('int64', new BigInt64Array(rows.length).fill(BigInt(args.target)), [rows.length]),
  };
  const outputs = await session.run(feeds, ['logits', ...args.methods.map((m) => `cam_${m}`)]);

  fs.mkdirSync(args.out, { recursive: true });
  const classes = outputs.logits.dims[1];
  rows.forEach(([file, rowIndex], r) => {
    const logits = Array.from(outputs.logits.data.subarray(r * classes, (r + 1) * classes));
    const target = args.target >= 0 ? args.target : logits.indexOf(Math.max(...logits));
    const stem = path.basename(file, path.extname(file)) + (rowIndex >= 0 ? `-${rowIndex}` : '');
    const maps = args.methods.map((method) => {
      const output = outputs[`cam_${method}`];
      const [, h, w] = output.dims;
      const values = output.data.slice(r * h * w, (r + 1) * h * w);
      const mapFile = path.join(args.out, `${stem}.${method}.${target}.npy`);
      writeNpy(mapFile, values, [h, w]);
      return { method, file: mapFile, shape: [h, w], values };
    });
    const predictions = topK(logits, args.topK, info.labels || []);
    const label = (info.labels || [])[target] ?? String(target);
    if (args.json) {
      const rowsOf = (m) => Array.from({ length: m.shape[0] }, (_, i) => Array.from(m.values.subarray(i * m.shape[1], (i + 1) * m.shape[1])));
      console.log(JSON.stringify({ input: file, row: rowIndex < 0 ? 0 : rowIndex, model: info.name, target,
        target_label: label, predictions, logits,
        maps: maps.map((m) => ({ method: m.method, file: m.file, shape: m.shape, values: rowsOf(m) })) }));
      return;
    }
    console.log(`${file}${rowIndex >= 0 ? ` [${rowIndex}]` : ''} (${info.name})`);
    predictions.forEach((p) => console.log(`  ${(100 * p.score).toFixed(1).padStart(5)}%  ${p.index}  ${p.label}`));
    maps.forEach((m) => console.log(`  ${m.method} for ${label} (${target}), raw [${m.shape}]: ${m.file}`));
  });
  return 0;
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (error) => {
  console.error(error.message || String(error));
  process.exitCode = 1;
});
