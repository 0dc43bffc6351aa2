// The agent's standalone service source: a local services file, watched, fed into
// the service model and from there into the eBPF maps. A bad file is reported and
// the last good state stays programmed (the watcher only calls back with good
// content). The Kubernetes source of a later issue feeds the same model.
import type { Logger } from 'pino';
import { ServiceLb } from '../dataplane/service-lb.js';
import { ServicesFileWatcher } from '../services/file-source.js';
import { ServiceModel } from '../services/model.js';

export interface ServicesSourceOptions {
  file: string;
  pinRoot: string;
  cgroupPath: string;
  log: Logger;
}

export interface RunningServicesSource {
  close(): void;
}

export async function startServicesSource(opts: ServicesSourceOptions): Promise<RunningServicesSource> {
  const lb = ServiceLb.open({ pinRoot: opts.pinRoot, cgroupPath: opts.cgroupPath });
  const model = new ServiceModel();
  const watcher = new ServicesFileWatcher(opts.file, {
    onChange: (items) => {
      const t0 = performance.now();
      model.replaceAll(items);
      const stats = lb.apply(model.desired());
      if (!lb.linksPinned()) lb.attach();
      opts.log.info(
        { file: opts.file, services: model.size, mapOps: stats.ops, ms: Math.round((performance.now() - t0) * 100) / 100 },
        'services programmed',
      );
    },
    onError: (err) => opts.log.error({ file: opts.file, err: err.message }, 'services file rejected; the last good state stays programmed'),
  });
  try {
    await watcher.start();
  } catch (err) {
    lb.close();
    throw err;
  }
  return {
    close() {
      watcher.close();
      // Links stay pinned: services keep working while the agent restarts.
      lb.close();
    },
  };
}
