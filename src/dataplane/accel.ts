// Same-node socket acceleration (issue 4): loads bpf/accel.o, pins its maps,
// programs and the sock_ops cgroup link under <pinRoot>/accel, and flips the
// global switch. Everything is pinned so an agent restart or upgrade reuses the
// live sockhash: established accelerated connections keep working.
import { existsSync, statSync, unlinkSync } from 'node:fs';
import { BpfObject, BpfProgram, BpfLink, AttachType } from '../kernel/bpf/object.js';
import { TypedMap, u32, u64 } from '../kernel/bpf/map.js';
import { BpfError } from '../kernel/bpf/errors.js';
import { ensurePinDir, removePins, withPinDirLock, type BpffsOptions } from '../kernel/bpf/pins.js';
import { DEFAULTS } from '../defaults.js';
import { bpfObjectPath } from '../home.js';
import { mapsUsedBy, repinMaps } from '../kernel/bpf/repin.js';
import { accelPins, accelCfgCodec, sockKeyCodec, ACCEL_MAP_CODECS, type SockKey } from './accel-maps.js';
import { openPodRegistry } from './accel-registry.js';

export interface AccelOptions extends BpffsOptions {
  pinRoot?: string;
  /**
   * cgroup2 directory sock_ops attaches to: production the hierarchy's root, which
   * the caller finds (src/kernel/cgroup.ts); tests a sub-cgroup they created.
   * Needed by enable() only: status and the pod registry work without it.
   */
  cgroupPath?: string;
  /** Compiled bpf/accel.c; defaults to build/bpf/accel.o of this checkout. */
  objectPath?: string;
  /** Where to say what it did that is worth knowing but not an error (the caller's log). */
  log?: (msg: string) => void;
}

export interface AccelStatus {
  /** Pins exist (enable() ran at least once and teardown() did not). */
  setUp: boolean;
  /** Global switch: new connections are accelerated and existing ones redirect. */
  enabled: boolean;
  /** sock_ops is attached (pinned cgroup link present). */
  attached: boolean;
  cgroupId?: bigint;
  /** Sockets currently in the sockhash (two per accelerated connection). */
  sockets: number;
  pods: { ip: string; optOut: boolean }[];
}

export type RegisterResult = { ok: true } | { ok: false; reason: string };

export class Accel {
  readonly pinRoot: string;
  readonly cgroupPath: string | undefined;
  readonly objectPath: string;
  private readonly pins: ReturnType<typeof accelPins>;
  private readonly log: (msg: string) => void;
  private readonly bpffs: BpffsOptions;

  private constructor(opts: AccelOptions) {
    this.pinRoot = opts.pinRoot ?? DEFAULTS.pinRoot;
    this.cgroupPath = opts.cgroupPath;
    this.objectPath = opts.objectPath ?? bpfObjectPath('accel');
    this.log = opts.log ?? (() => {});
    this.bpffs = opts.mountBpffs === undefined ? {} : { mountBpffs: opts.mountBpffs };
    this.pins = accelPins(this.pinRoot);
  }

  /** Cheap: no kernel object is touched until a method needs it. */
  static open(opts: AccelOptions = {}): Accel {
    return new Accel(opts);
  }

  /** Serialises enable/disable/teardown across processes (CLI vs agent) with flock on the pin dir. */
  private locked<T>(fn: () => T): T {
    return withPinDirLock(ensurePinDir(this.pins.dir, this.bpffs), fn);
  }

  private cgroup(): string {
    if (this.cgroupPath === undefined) throw new Error('accel: no cgroup2 directory to attach sock_ops to (cgroupPath)');
    return this.cgroupPath;
  }

  private cgroupId(): bigint {
    return statSync(this.cgroup(), { bigint: true }).ino;
  }

  /**
   * Loads if needed, pins, attaches sock_ops to the cgroup and sk_msg to the
   * sockhash, and switches acceleration on. Idempotent. With pins from a
   * previous run, it reuses the pinned programs (no reload) unless `reload`
   * asks for an upgrade, which swaps programs in place (link update, sk_msg
   * replace) while the pinned maps, and the sockets in them, stay.
   */
  enable(opts: { reload?: boolean } = {}): void {
    this.locked(() => {
      const p = this.pins;
      // Pins removed or replaced under the running programs: put back the maps
      // they use, so the registry the CNI plugin writes is the one sock_ops reads.
      for (const r of repinMaps(p.dir, this.runningMaps())) this.log(`repaired: ${r}`);
      const pinned = [p.pods, p.sockHash, p.cfg, p.progSockops, p.progSkmsg].every((f) => existsSync(f));
      let sockops: BpfProgram;
      let skmsg: BpfProgram;
      let obj: BpfObject | undefined;
      if (!pinned || opts.reload) {
        if (!existsSync(this.objectPath)) throw new Error(`accel: BPF object ${this.objectPath} missing (run scripts/build.sh)`);
        obj = BpfObject.open(this.objectPath, { pinRoot: p.dir });
        obj.load(); // pinned maps (registry, sockhash, cfg) are reused, not recreated
        sockops = obj.program('patu_sockops');
        skmsg = obj.program('patu_skmsg');
        for (const [prog, path] of [[sockops, p.progSockops], [skmsg, p.progSkmsg]] as const) {
          if (existsSync(path)) unlinkSync(path);
          prog.pin(path);
        }
      } else {
        sockops = BpfProgram.fromPin(p.progSockops);
        skmsg = BpfProgram.fromPin(p.progSkmsg);
      }
      const sockHash = TypedMap.fromPin(p.sockHash, sockKeyCodec, u64);
      const cfg = TypedMap.fromPin(p.cfg, u32, accelCfgCodec);
      try {
        // Replaces whatever sk_msg program the map had: existing sockets keep
        // the program they were added with; new ones get this one.
        skmsg.attachToMap(sockHash.fd, AttachType.SK_MSG_VERDICT);
        this.ensureSockopsLink(sockops);
        cfg.update(0, { enabled: 1, reserved: 0 });
      } finally {
        sockHash.close();
        cfg.close();
        sockops.close();
        skmsg.close();
        obj?.close();
      }
    });
  }

  /** The accel maps that the attached sock_ops (through its pinned link) and the pinned programs use. */
  private runningMaps(): ReturnType<typeof mapsUsedBy> {
    const p = this.pins;
    const programs: { progId: number; label: string }[] = [];
    if (existsSync(p.linkSockops)) {
      const link = BpfLink.fromPin(p.linkSockops);
      try {
        programs.push({ progId: link.info().progId, label: 'the attached patu_sockops' });
      } finally {
        link.close();
      }
    }
    for (const [path, label] of [[p.progSockops, 'the pinned patu_sockops'], [p.progSkmsg, 'the pinned patu_skmsg']] as const) {
      if (!existsSync(path)) continue;
      const prog = BpfProgram.fromPin(path);
      try {
        programs.push({ progId: prog.id, label });
      } finally {
        prog.close();
      }
    }
    return mapsUsedBy(programs, new Set(Object.keys(ACCEL_MAP_CODECS)));
  }

  private ensureSockopsLink(sockops: BpfProgram): void {
    const path = this.pins.linkSockops;
    if (existsSync(path)) {
      const link = BpfLink.fromPin(path);
      try {
        if (link.info().cgroupId === this.cgroupId()) {
          link.update(sockops.fd); // no-op for the same program, in-place swap on upgrade
          return;
        }
        this.log(`sock_ops link at ${path} is on another cgroup; moving it to ${this.cgroupPath}`);
        link.destroy();
      } finally {
        link.close();
      }
    }
    const link = sockops.attachCgroup(this.cgroup(), AttachType.CGROUP_SOCK_OPS);
    try {
      link.pin(path);
    } catch (e) {
      link.destroy();
      throw e;
    }
    link.close();
  }

  /**
   * Switches acceleration off and detaches both programs; keeps the pod
   * registry and pinned programs. Connections already in the sockhash stop
   * redirecting at once (sk_msg checks the switch) and continue over TCP.
   */
  disable(): void {
    if (!existsSync(this.pins.dir)) return;
    this.locked(() => {
      const p = this.pins;
      if (existsSync(p.cfg)) {
        const cfg = TypedMap.fromPin(p.cfg, u32, accelCfgCodec);
        try { cfg.update(0, { enabled: 0, reserved: 0 }); } finally { cfg.close(); }
      }
      if (existsSync(p.linkSockops)) BpfLink.fromPin(p.linkSockops).destroy();
      if (existsSync(p.progSkmsg) && existsSync(p.sockHash)) {
        const skmsg = BpfProgram.fromPin(p.progSkmsg);
        const sockHash = TypedMap.fromPin(p.sockHash, sockKeyCodec, u64);
        try {
          skmsg.detachFromMap(sockHash.fd, AttachType.SK_MSG_VERDICT);
        } catch (e) {
          if (!(e instanceof BpfError && e.code === 'ENOENT')) throw e; // already detached
        } finally {
          skmsg.close();
          sockHash.close();
        }
      }
    });
  }

  status(): AccelStatus {
    const p = this.pins;
    const out: AccelStatus = { setUp: existsSync(p.pods), enabled: false, attached: false, sockets: 0, pods: [] };
    if (!out.setUp) return out;
    if (existsSync(p.cfg)) {
      const cfg = TypedMap.fromPin(p.cfg, u32, accelCfgCodec);
      try { out.enabled = (cfg.lookup(0)?.enabled ?? 0) === 1; } finally { cfg.close(); }
    }
    if (existsSync(p.linkSockops)) {
      const link = BpfLink.fromPin(p.linkSockops);
      try {
        out.cgroupId = link.info().cgroupId;
        out.attached = true;
      } finally {
        link.close();
      }
    }
    if (existsSync(p.sockHash)) {
      const sh = TypedMap.fromPin(p.sockHash, sockKeyCodec, u64);
      try { for (const _ of sh.keys()) out.sockets++; } finally { sh.close(); }
    }
    const reg = openPodRegistry(this.pinRoot);
    if (reg) {
      try { out.pods = reg.list(); } finally { reg.close(); }
    }
    return out;
  }

  /** The accelerated sockets' 4-tuples (each connection appears once per end). */
  sockets(): SockKey[] {
    if (!existsSync(this.pins.sockHash)) return [];
    const sh = TypedMap.fromPin(this.pins.sockHash, sockKeyCodec, u64);
    try { return [...sh.keys()]; } finally { sh.close(); }
  }

  /**
   * Adds a pod address to the pinned registry (opens only that map). A no-op,
   * with the reason returned, when acceleration was never set up on this node.
   */
  registerPod(ip: string, opts: { optOut?: boolean; ifindex?: number; netnsCookie?: bigint } = {}): RegisterResult {
    const reg = openPodRegistry(this.pinRoot);
    if (!reg) {
      const reason = `acceleration not set up (no ${this.pins.pods}); ${ip} not registered`;
      this.log(reason);
      return { ok: false, reason };
    }
    try {
      const extra: { ifindex?: number; netnsCookie?: bigint } = {};
      if (opts.ifindex !== undefined) extra.ifindex = opts.ifindex;
      if (opts.netnsCookie !== undefined) extra.netnsCookie = opts.netnsCookie;
      reg.register(ip, opts.optOut ?? false, extra);
      return { ok: true };
    } finally {
      reg.close();
    }
  }

  /**
   * Removes a pod address. Its established connections stay accelerated until
   * they close (they end with the pod's netns anyway); new ones are not.
   */
  unregisterPod(ip: string): RegisterResult {
    const reg = openPodRegistry(this.pinRoot);
    if (!reg) return { ok: false, reason: `acceleration not set up (no ${this.pins.pods})` };
    try {
      return reg.unregister(ip) ? { ok: true } : { ok: false, reason: `${ip} was not registered` };
    } finally {
      reg.close();
    }
  }

  /**
   * disable(), then removes <pinRoot>/accel and nothing else. Once the last
   * reference to the sockhash is gone the kernel frees it and the sockets
   * in it revert to plain TCP.
   */
  teardown(): void {
    if (!existsSync(this.pins.dir)) return;
    this.disable();
    removePins(this.pins.dir);
  }
}
