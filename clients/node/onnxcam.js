// A small Node.js client for the onnxcam Explainer service, generated at run time from the
// project's own proto (protos/onnxcam/v1/explainer.proto) with @grpc/proto-loader.
//
// Calls set no deadline unless asked to, as gRPC clients do by default in every language.
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const PROTO_FILE = 'onnxcam/v1/explainer.proto';

// Field names as the proto spells them, enums as their names (GRADCAM), int64 as numbers.
const LOADER_OPTIONS = { keepCase: true, enums: String, longs: Number, defaults: true, oneofs: true,
  includeDirs: [PROTO_ROOT] };

function loadService(protoRoot = PROTO_ROOT) {
  const definition = protoLoader.loadSync(path.join(protoRoot, PROTO_FILE), { ...LOADER_OPTIONS,
    includeDirs: [protoRoot] });
  return grpc.loadPackageDefinition(definition).onnxcam.v1;
}

// Options for calls: no deadline unless timeoutS is given.
function callOptions(timeoutS) {
  return timeoutS ? { deadline: new Date(Date.now() + timeoutS * 1000) } : {};
}

class ExplainerClient {
  constructor(address, { timeoutS = 0, credentials = grpc.credentials.createInsecure() } = {}) {
    const onnxcam = loadService();
    // The server accepts requests up to 16 MiB and answers up to 64 MiB by default.
    this.stub = new onnxcam.Explainer(address, credentials, {
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
      'grpc.max_send_message_length': 16 * 1024 * 1024,
    });
    this.timeoutS = timeoutS;
  }

  _unary(method, request) {
    return new Promise((resolve, reject) => {
      this.stub[method](request, callOptions(this.timeoutS), (error, response) => (error ? reject(error)
        : resolve(response)));
    });
  }

  listModels() {
    return this._unary('ListModels', {}).then((response) => response.models);
  }

  metadata(model) {
    return this._unary('GetModelMetadata', { model });
  }

  // One image (a path or a Buffer of JPEG/PNG/WebP bytes) in; predictions and heatmaps out.
  explain(image, model, options = {}) {
    return this._unary('Explain', explainRequest(image, model, options));
  }

  // Many images over one stream; responses come back in request order. A failed request gets a
  // response with `error` set and the stream goes on.
  explainStream(images, model, options = {}) {
    return new Promise((resolve, reject) => {
      const responses = [];
      const call = this.stub.ExplainStream(callOptions(this.timeoutS));
      call.on('data', (response) => responses.push(response));
      call.on('error', reject);
      call.on('end', () => resolve(responses));
      images.forEach((image, i) => call.write(explainRequest(image, model, { ...options, request_id: String(i) })));
      call.end();
    });
  }

  close() {
    this.stub.close();
  }
}

function explainRequest(image, model, { methods = ['GRADCAM'], targets = [], top_k = 5, heatmap_png = true,
  overlay_png = false, raw = false, budget_ms = 0, request_id = '' } = {}) {
  const bytes = Buffer.isBuffer(image) ? image : fs.readFileSync(image);
  return { model, image: bytes, methods, targets, top_k, heatmap_png, overlay_png, raw, budget_ms, request_id };
}

// grpc.status code number -> name (5 -> 'NOT_FOUND').
function statusName(code) {
  return Object.keys(grpc.status).find((name) => grpc.status[name] === code) || String(code);
}

module.exports = { ExplainerClient, explainRequest, loadService, statusName, PROTO_ROOT };
