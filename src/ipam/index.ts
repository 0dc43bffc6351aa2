// patu IPAM: host-local semantics, in-process. See docs/ipam.md.
export * from '../net/cidr.js';
export * from './config.js';
export * from './backend.js';
export * from './store.js';
export * from './allocator.js';
