import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createLog } from '../../src/agent/log.js';

describe('agent log (pino line format)', () => {
  it('writes one JSON line per call with level, time, pid, hostname, base fields, fields and msg', () => {
    const lines: string[] = [];
    const log = createLog({ level: 'info', base: { component: 'patu-agent' }, write: (l) => lines.push(l) });
    const before = Date.now();
    log.info({ socket: '/run/x.sock', n: 3 }, 'serving');
    assert.equal(lines.length, 1);
    assert.ok(lines[0]!.endsWith('}\n'));
    const o = JSON.parse(lines[0]!);
    assert.equal(o.level, 30);
    assert.ok(o.time >= before && o.time <= Date.now());
    assert.equal(o.pid, process.pid);
    assert.equal(typeof o.hostname, 'string');
    assert.equal(o.component, 'patu-agent');
    assert.equal(o.socket, '/run/x.sock');
    assert.equal(o.n, 3);
    assert.equal(o.msg, 'serving');
  });

  it('drops levels below the threshold and keeps those at or above it', () => {
    const lines: string[] = [];
    const log = createLog({ level: 'warn', write: (l) => lines.push(l) });
    log.debug({}, 'a');
    log.info({}, 'b');
    log.warn({}, 'c');
    log.error({}, 'd');
    assert.deepEqual(lines.map((l) => [JSON.parse(l).level, JSON.parse(l).msg]), [[40, 'c'], [50, 'd']]);
  });

  it('prints Errors with their message and bigints as strings; empty fields and quotes stay valid JSON', () => {
    const lines: string[] = [];
    const log = createLog({ level: 'trace', write: (l) => lines.push(l) });
    log.error({ err: new Error('boom'), id: 5n }, 'with "quotes"\nand a newline');
    log.trace({}, 'empty');
    const o = JSON.parse(lines[0]!);
    assert.equal(o.err.message, 'boom');
    assert.equal(o.err.type, 'Error');
    assert.equal(o.id, '5');
    assert.equal(o.msg, 'with "quotes"\nand a newline');
    assert.equal(JSON.parse(lines[1]!).msg, 'empty');
    assert.equal(lines.join('').split('\n').length, 3);
  });

  it('rejects an unknown level naming the choices', () => {
    assert.throws(() => createLog({ level: 'verbose' }), /log level "verbose": use one of trace, debug, info, warn, error, fatal/);
  });
});
