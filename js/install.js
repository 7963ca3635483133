// install.js: builds herd's native addon (crates/herd-node) when herd-cluster is installed where
// herd's sources and cargo are at hand, as node-gyp builds C++ addons at install time: from a
// clone of herd (`npm install <path-to-herd>/js`). The result is herd_node.node in this folder,
// which native.js loads when herd has not named one (HERD_NODE_ADDON).
//
// Never fails the install: without herd's sources (installed from the registry or a tarball) or
// without cargo, it says why and stops; the package then uses the addon herd itself provides
// (`herd run` finds it beside its binary), or its json path.
//
//   HERD_NODE_BUILD=0          skip the build
//   HERD_NODE_PROFILE=debug    build with cargo's dev profile (default: release)
'use strict';

const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');

function say(text) {
  process.stderr.write(`herd-cluster: ${text}\n`);
}

function main() {
  if (process.env.HERD_NODE_BUILD === '0') return say('HERD_NODE_BUILD=0: the native addon is not built');
  const workspace = path.join(__dirname, '..');
  const manifest = path.join(workspace, 'crates', 'herd-node', 'Cargo.toml');
  if (!fs.existsSync(manifest)) {
    return say('no herd sources beside this package: the native addon comes from herd itself (herd run names it)');
  }
  const cargo = process.env.CARGO || 'cargo';
  const probe = spawnSync(cargo, ['--version'], { encoding: 'utf8' });
  if (probe.status !== 0) return say(`no cargo (${cargo}): the native addon is not built; the json path is used unless herd provides one`);
  const profile = process.env.HERD_NODE_PROFILE === 'debug' ? 'debug' : 'release';
  const args = ['build', '-p', 'herd-node', '--manifest-path', path.join(workspace, 'Cargo.toml')];
  if (profile === 'release') args.push('--release');
  say(`building the native addon: ${cargo} ${args.join(' ')}`);
  const built = spawnSync(cargo, args, { stdio: ['ignore', 'inherit', 'inherit'] });
  if (built.status !== 0) return say('the native addon did not build: the json path is used unless herd provides one');
  const target = process.env.CARGO_TARGET_DIR || path.join(workspace, 'target');
  const lib = path.join(target, profile, 'libherd_node.so');
  if (!fs.existsSync(lib)) return say(`no ${lib} after the build: the native addon is not installed`);
  const dest = path.join(__dirname, 'herd_node.node');
  fs.copyFileSync(lib, `${dest}.tmp`);
  fs.renameSync(`${dest}.tmp`, dest);
  say(`native addon installed: ${dest}`);
}

try {
  main();
} catch (err) {
  say(`the native addon is not installed: ${err.message}`);
}
