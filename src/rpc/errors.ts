// DataplaneError codes on the wire (src/dataplane/api.ts lists them): the server turns a
// DataplaneError into a gRPC status plus a `patu-dataplane-error` trailer naming the code,
// the client turns what it receives back into a DataplaneError. The trailer makes the code
// exact where gRPC statuses are shared (RESOURCE_EXHAUSTED is also what connect answers
// for an oversized message; INTERNAL also what an HTTP/2 stream reset gives).
import { Code, ConnectError } from '@connectrpc/connect';
import { DataplaneError, type DataplaneErrorCode } from '../dataplane/api.js';
import { messageOf } from '../errors.js';

export const ERROR_TRAILER = 'patu-dataplane-error';

const TO_GRPC: Record<DataplaneErrorCode, Code> = {
  invalid: Code.InvalidArgument,
  resync: Code.FailedPrecondition,
  capacity: Code.ResourceExhausted,
  unavailable: Code.Unavailable,
  deadline: Code.DeadlineExceeded,
  internal: Code.Internal,
};

const isCode = (s: string | null): s is DataplaneErrorCode => s !== null && Object.hasOwn(TO_GRPC, s);

/** grpc-message travels in an HTTP/2 trailer: long texts (a list of every bad field) are cut. */
const MAX_MESSAGE = 2048;
const cut = (s: string): string => (s.length > MAX_MESSAGE ? `${s.slice(0, MAX_MESSAGE)}... (${s.length - MAX_MESSAGE} more characters)` : s);

/**
 * Server side: what the client gets for an error thrown by the data plane. A DataplaneError
 * keeps its code and message; anything else is INTERNAL with its message. Never a stack,
 * never a cause chain (those stay in the manager's log).
 */
export function toConnectError(err: unknown): { wire: ConnectError; code: DataplaneErrorCode } {
  if (err instanceof DataplaneError && isCode(err.code)) {
    return { wire: new ConnectError(cut(err.message), TO_GRPC[err.code], { [ERROR_TRAILER]: err.code }), code: err.code };
  }
  return { wire: new ConnectError(cut(`data plane failed: ${messageOf(err)}`), Code.Internal, { [ERROR_TRAILER]: 'internal' }), code: 'internal' };
}

/**
 * Client side: a DataplaneError for whatever a call threw.
 *   - an error the server sent with the trailer: that code, that message;
 *   - a status the server's framework sent (no trailer): by gRPC code (an oversized request is 'invalid',
 *     an unknown method 'internal');
 *   - a deadline (the client's own timer or the server's) is 'deadline'; a call the caller aborted too
 *     (`callerAborted`: it stopped waiting, and the data plane may have applied it, as after a deadline);
 *   - anything raised on this side (connection refused or reset, TLS refused, the socket missing, an HTTP/2
 *     stream reset or CANCEL, which is what a server that drops the connection after the handshake gives):
 *     'unavailable'.
 * The ConnectError stays the cause.
 */
export function fromCallError(err: unknown, method: string, callerAborted = false): DataplaneError {
  if (err instanceof DataplaneError) return err;
  const ce = ConnectError.from(err);
  const what = `${method}: `;
  const marked = ce.isWireError ? ce.metadata.get(ERROR_TRAILER) : null;
  if (isCode(marked)) return new DataplaneError(marked, ce.rawMessage, { cause: ce });
  if (ce.code === Code.DeadlineExceeded || (ce.code === Code.Canceled && callerAborted)) {
    return new DataplaneError('deadline', `${what}${ce.rawMessage} (the data plane may still have applied it)`, { cause: ce });
  }
  if (ce.isWireError) {
    const code: DataplaneErrorCode =
      ce.code === Code.InvalidArgument || ce.code === Code.ResourceExhausted ? 'invalid'
        : ce.code === Code.FailedPrecondition ? 'resync'
          : ce.code === Code.Unavailable ? 'unavailable'
            : 'internal';
    return new DataplaneError(code, `${what}${ce.rawMessage}`, { cause: ce });
  }
  return new DataplaneError('unavailable', `${what}${ce.rawMessage}`, { cause: ce });
}
