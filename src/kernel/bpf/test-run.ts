// BPF_PROG_TEST_RUN (libbpf bpf_prog_test_run_opts): runs a loaded program on
// a packet the caller crafted, in the kernel, without any device. Used by the
// policy property test (the compiled tc object judged against the reference
// evaluator) and by the per-packet cost benchmark (repeat: the kernel times
// the loop and reports the mean per run).
//
// For tc (sched_cls) programs the packet is an Ethernet frame; the kernel sets
// skb->protocol from it and, unless ctx names another, runs on the loopback
// device (skb->ifindex 1). Maps the program changes (conntrack, counters) stay
// changed: each run is a real packet as far as the maps are concerned.
import koffi from 'koffi';
import { raw } from './libbpf.js';
import { BpfError } from './errors.js';

export interface TestRunOptions {
  /** The packet (for tc: from the Ethernet header on). At least 14 bytes. */
  data: Buffer;
  /** Runs of the program (default 1); the duration is the mean per run. */
  repeat?: number;
  /**
   * tc only: the __sk_buff fields the kernel lets a test run set. ifindex must be
   * a device of the caller's network namespace (1: loopback, the default).
   */
  skb?: { ifindex?: number; ingressIfindex?: number; mark?: number; priority?: number };
  /** Room for the packet as the program left it (default: none copied back). */
  dataOutSize?: number;
}

export interface TestRunResult {
  /** The program's return value as a signed int (tc: -1 TC_ACT_UNSPEC, 0 OK, 2 SHOT, 7 REDIRECT). */
  retval: number;
  /** Mean run time in ns as the kernel measured it (integer, 0 for a very fast single run). */
  durationNs: number;
  /** The packet after the run, when dataOutSize was given. */
  dataOut?: Buffer;
}

// struct bpf_test_run_opts (libbpf 1.1, 80 bytes): sz@0 data_in@8 data_out@16 data_size_in@24
// data_size_out@28 ctx_in@32 ctx_out@40 ctx_size_in@48 ctx_size_out@52 retval@56 repeat@60
// duration@64 flags@68 cpu@72 batch_size@76.
const OPTS_SIZE = 80;
// struct __sk_buff (UAPI): 192 bytes; mark@8 priority@32 ingress_ifindex@36 ifindex@40.
const SKB_SIZE = 192;

/** Runs progFd once (or `repeat` times) on opts.data. Throws BpfError when the kernel refuses the run. */
export function testRun(progFd: number, opts: TestRunOptions): TestRunResult {
  const data = opts.data;
  if (data.length < 14) throw new Error(`testRun: the packet is ${data.length} bytes, a frame needs at least 14`);
  const o = Buffer.alloc(OPTS_SIZE);
  o.writeBigUInt64LE(BigInt(OPTS_SIZE), 0);
  o.writeBigUInt64LE(koffi.address(data), 8);
  o.writeUInt32LE(data.length, 24);
  let out: Buffer | undefined;
  if (opts.dataOutSize) {
    out = Buffer.alloc(opts.dataOutSize);
    o.writeBigUInt64LE(koffi.address(out), 16);
    o.writeUInt32LE(out.length, 28);
  }
  let ctx: Buffer | undefined;
  if (opts.skb) {
    ctx = Buffer.alloc(SKB_SIZE);
    ctx.writeUInt32LE(opts.skb.mark ?? 0, 8);
    ctx.writeUInt32LE(opts.skb.priority ?? 0, 32);
    ctx.writeUInt32LE(opts.skb.ingressIfindex ?? 0, 36);
    ctx.writeUInt32LE(opts.skb.ifindex ?? 0, 40);
    o.writeBigUInt64LE(koffi.address(ctx), 32);
    o.writeUInt32LE(ctx.length, 48);
  }
  const repeat = opts.repeat ?? 1;
  if (!Number.isInteger(repeat) || repeat < 1) throw new Error(`testRun: repeat must be a positive integer, got ${repeat}`);
  o.writeInt32LE(repeat, 60);
  const rc = raw.bpf_prog_test_run_opts(progFd, o) as number;
  // Keep the buffers alive across the call (the opts hold raw addresses).
  void data; void out; void ctx;
  if (rc < 0) throw new BpfError('bpf_prog_test_run_opts', -rc, { program: `fd ${progFd}` });
  const res: TestRunResult = { retval: o.readInt32LE(56), durationNs: o.readUInt32LE(64) };
  if (out) res.dataOut = out.subarray(0, o.readUInt32LE(28));
  return res;
}

export const TC_ACT = { UNSPEC: -1, OK: 0, SHOT: 2, REDIRECT: 7 } as const;

/** What a crafted IPv4 frame carries (ports host order; TCP flags as in the header byte, e.g. 0x02 SYN). */
export interface Ipv4PacketSpec {
  src: string;
  dst: string;
  /** IP protocol number: 6 TCP, 17 UDP, 132 SCTP, 1 ICMP, or anything else (an 8-byte zero payload). */
  proto: number;
  sport?: number;
  dport?: number;
  /** TCP flags byte (default SYN). */
  tcpFlags?: number;
  /** ICMP type/code (default echo request 8/0); id = sport. */
  icmpType?: number;
  icmpCode?: number;
  /** ICMP errors (type 3, 11...): the packet they quote, crafted the same way (its IP header on). */
  icmpInner?: Omit<Ipv4PacketSpec, 'icmpInner'>;
  /** IP id and the fragment field (flags << 13 | offset in 8-byte units), default 0. */
  ipId?: number;
  fragField?: number;
  /** Bytes after the L4 header. */
  payload?: number;
}

const ipBytes = (s: string): number[] => {
  const p = s.split('.').map(Number);
  if (p.length !== 4 || p.some((x) => !Number.isInteger(x) || x < 0 || x > 255)) throw new Error(`not an IPv4 address: ${s}`);
  return p;
};

function csum(b: Buffer): number {
  let s = 0;
  for (let i = 0; i + 1 < b.length; i += 2) s += b.readUInt16BE(i);
  if (b.length & 1) s += (b[b.length - 1] ?? 0) << 8;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

/** The IPv4 header + L4 of spec (no Ethernet header), checksums filled. */
export function craftIpv4(spec: Omit<Ipv4PacketSpec, never>): Buffer {
  let l4: Buffer;
  const sport = spec.sport ?? 0;
  const dport = spec.dport ?? 0;
  const pay = Buffer.alloc(spec.payload ?? 0);
  if (spec.proto === 6) {
    l4 = Buffer.alloc(20);
    l4.writeUInt16BE(sport, 0);
    l4.writeUInt16BE(dport, 2);
    l4.writeUInt32BE(1, 4);
    l4[12] = 5 << 4;
    l4[13] = spec.tcpFlags ?? 0x02;
    l4.writeUInt16BE(65535, 14);
  } else if (spec.proto === 17 || spec.proto === 132) {
    l4 = Buffer.alloc(spec.proto === 17 ? 8 : 12);
    l4.writeUInt16BE(sport, 0);
    l4.writeUInt16BE(dport, 2);
    if (spec.proto === 17) l4.writeUInt16BE(8 + pay.length, 4);
  } else if (spec.proto === 1) {
    const inner = spec.icmpInner ? craftIpv4(spec.icmpInner).subarray(0, 28) : Buffer.alloc(0);
    l4 = Buffer.concat([Buffer.alloc(8), inner]);
    l4[0] = spec.icmpType ?? 8;
    l4[1] = spec.icmpCode ?? 0;
    l4.writeUInt16BE(sport, 4);
  } else {
    l4 = Buffer.alloc(8);
  }
  l4 = Buffer.concat([l4, pay]);
  if (spec.proto === 1) l4.writeUInt16BE(csum(l4), 2);
  const ip = Buffer.alloc(20);
  ip[0] = 0x45;
  ip.writeUInt16BE(20 + l4.length, 2);
  ip.writeUInt16BE(spec.ipId ?? 0, 4);
  ip.writeUInt16BE(spec.fragField ?? 0, 6);
  ip[8] = 64;
  ip[9] = spec.proto;
  Buffer.from(ipBytes(spec.src)).copy(ip, 12);
  Buffer.from(ipBytes(spec.dst)).copy(ip, 16);
  ip.writeUInt16BE(csum(ip), 10);
  return Buffer.concat([ip, l4]);
}

/** An Ethernet frame (IPv4 ethertype, made-up MACs) around craftIpv4(spec): what testRun wants for tc. */
export function craftFrame(spec: Ipv4PacketSpec, ethertype = 0x0800): Buffer {
  const eth = Buffer.from([0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, ethertype >> 8, ethertype & 0xff]);
  return Buffer.concat([eth, ethertype === 0x0800 ? craftIpv4(spec) : Buffer.alloc(40)]);
}
