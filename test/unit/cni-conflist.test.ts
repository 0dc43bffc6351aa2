import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildConflist, writeConflistIfChanged } from '../../src/cni/conflist.js';
import { DEFAULTS } from '../../src/defaults.js';
import { parseNetConf } from '../../src/cni/netconf.js';

test('the conflist is one patu plugin with the node pod subnet, and the plugin accepts it', () => {
  const text = buildConflist({ podCIDR: '10.244.3.0/24', clusterCIDR: '10.244.0.0/16', pinRoot: '/sys/fs/bpf/patu' });
  const doc = JSON.parse(text);
  assert.equal(doc.name, 'patu');
  assert.equal(doc.plugins.length, 1);
  assert.equal(doc.plugins[0].type, 'patu');
  assert.equal(doc.plugins[0].podCIDR, '10.244.3.0/24');
  assert.equal(doc.plugins[0].clusterCIDR, '10.244.0.0/16');
  // patu serves hostPorts itself: the runtime passes runtimeConfig.portMappings only to a plugin that declares it.
  assert.deepEqual(doc.plugins[0].capabilities, { portMappings: true });
  // What a runtime hands the plugin: the list's name and cniVersion injected into the plugin's config.
  const conf = parseNetConf({ ...doc.plugins[0], name: doc.name, cniVersion: doc.cniVersion });
  assert.deepEqual(conf.ipam.ranges, [[{ subnet: '10.244.3.0/24' }]]);
  assert.equal(conf.clusterCIDR, '10.244.0.0/16');
  assert.equal(conf.pinRoot, '/sys/fs/bpf/patu');
});

test('writes atomically, only when the content changes, and leaves no temp file', () => {
  const dir = mkdtempSync(join(tmpdir(), `patu-conflist-${process.pid}-`));
  try {
    const sub = join(dir, 'net.d'); // created on demand
    const a = buildConflist({ podCIDR: '10.200.0.0/24', clusterCIDR: '10.200.0.0/16' });
    const b = buildConflist({ podCIDR: '10.200.1.0/24', clusterCIDR: '10.200.0.0/16' });
    assert.equal(writeConflistIfChanged(sub, a), true);
    const path = join(sub, DEFAULTS.conflistName);
    assert.equal(readFileSync(path, 'utf8'), a);
    const ino = statSync(path).ino;
    assert.equal(writeConflistIfChanged(sub, a), false, 'same content must not rewrite');
    assert.equal(statSync(path).ino, ino, 'same content must not replace the file');
    assert.equal(writeConflistIfChanged(sub, b), true);
    assert.equal(readFileSync(path, 'utf8'), b);
    assert.notEqual(statSync(path).ino, ino, 'a change is a rename of a new file, not an in-place write');
    assert.deepEqual(readdirSync(sub), [DEFAULTS.conflistName]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a write that cannot happen names the path and the error, and keeps the old file', { skip: process.getuid?.() === 0 ? 'root ignores directory permissions' : false }, () => {
  const dir = mkdtempSync(join(tmpdir(), `patu-conflist-ro-${process.pid}-`));
  try {
    writeFileSync(join(dir, DEFAULTS.conflistName), 'old');
    chmodSync(dir, 0o555);
    assert.throws(() => writeConflistIfChanged(dir, 'new'), (e: Error) => e.message.includes(join(dir, DEFAULTS.conflistName)) && /EACCES/.test(e.message));
    assert.equal(readFileSync(join(dir, DEFAULTS.conflistName), 'utf8'), 'old');
  } finally {
    chmodSync(dir, 0o755);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a path that is not a directory fails with the path in the error', () => {
  const dir = mkdtempSync(join(tmpdir(), `patu-conflist-nd-${process.pid}-`));
  try {
    writeFileSync(join(dir, 'file'), 'x');
    assert.throws(() => writeConflistIfChanged(join(dir, 'file'), 'new'), (e: Error) => e.message.includes(join(dir, 'file')) && /ENOTDIR|EEXIST/.test(e.message));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the agent options reach the plugin: bridge, IPAM directory, masquerade off', () => {
  const doc = JSON.parse(buildConflist({ podCIDR: '10.244.3.0/24', clusterCIDR: '10.244.0.0/16', bridge: 'edge0', dataDir: '/srv/patu/ipam', masquerade: false }));
  const conf = parseNetConf({ ...doc.plugins[0], name: doc.name, cniVersion: doc.cniVersion });
  assert.equal(conf.bridge, 'edge0');
  assert.equal(conf.ipam.dataDir, '/srv/patu/ipam');
  assert.equal(conf.masquerade, false);
  assert.equal(JSON.parse(buildConflist({ podCIDR: '10.244.3.0/24', clusterCIDR: '10.244.0.0/16' })).plugins[0].masquerade, true, 'masquerade is on by default');
});
