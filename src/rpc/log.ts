// The log calls src/rpc makes: the shape of the agent's and manager's Log (src/agent/log.ts)
// without importing it (src/rpc sits below both). Fields never hold key or certificate bytes.
export interface RpcLog {
  debug(fields: object, msg: string): void;
  info(fields: object, msg: string): void;
  warn(fields: object, msg: string): void;
  error(fields: object, msg: string): void;
}
