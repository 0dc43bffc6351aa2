// `patu agent --nodes-file PATH`: routes to the other nodes' pods from a nodes file
// (src/nodes/file-source.ts), kept in step with it; a bad edit keeps the last good
// routes. The Kubernetes source feeds the same NodeRoutesSync from the Node objects.
import { NodesFileWatcher } from '../nodes/file-source.js';
import { NodeRoutesSync, nodeRoutesLogging, type NodeRoutesSyncOptions } from '../nodes/routes-sync.js';
import type { Log } from './log.js';

export async function startNodesFile(file: string, log: Log, opts: Omit<NodeRoutesSyncOptions, 'onApplied' | 'onRefused' | 'onNoSelf' | 'onError'>): Promise<() => void> {
  const sync = new NodeRoutesSync({ ...opts, ...nodeRoutesLogging(log, { file }) });
  const watcher = new NodesFileWatcher(file, {
    onChange: (nodes) => {
      sync.update(nodes);
    },
    onError: (err) => log.error({ file, err: err.message }, 'nodes file rejected; the last good routes stay programmed'),
  });
  try {
    await watcher.start();
  } catch (e) {
    sync.close();
    throw e;
  }
  return () => {
    watcher.close();
    sync.close();
  };
}
