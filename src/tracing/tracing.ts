// Traces of routing decisions (OpenTelemetry): spans for classify, owner lookup, forward and handoff
// with the sandbox id as an attribute, and W3C `traceparent` across the peer hop so one trace spans
// the ingress sidecar and the owner's. Off by default; while off nothing here creates a span, a
// context or a header: every helper returns undefined (or the shared empty object) after one
// comparison, and no tracer, not even the API's no-op one, is ever asked for a span.
//
// Context flows through async/await with AsyncLocalStorage (installed only when tracing is on);
// callbacks that Node's stream machinery calls (a first message completing) are bound with
// `bindContext`, which is the identity while tracing is off.
//
// The SDK (provider, processors, propagator, context manager) is loaded only when tracing starts: a
// sidecar with tracing off, the default, holds only the API (about 6 MB less RSS per replica).
import { context, trace, SpanKind, SpanStatusCode, type Attributes, type Context, type Span, type TextMapPropagator, type Tracer } from '@opentelemetry/api';
import type { SpanExporter } from '@opentelemetry/sdk-trace-base';
import type http2 from 'node:http2';

export const ATTR_SANDBOX = 'ohs.sandbox_id';
export const ATTR_REPLICA = 'ohs.replica';
export const ATTR_CLASS = 'ohs.class';

let tracer: Tracer | undefined;
/** W3C trace context; made by the first `startTracing`. */
let propagator: TextMapPropagator | undefined;
const NO_HEADERS: Readonly<Record<string, string>> = Object.freeze({});

export function tracingEnabled(): boolean {
  return tracer !== undefined;
}

export interface TracingHandle {
  shutdown(): Promise<void>;
}

export interface TracingOptions {
  serviceInstanceId: string;
  version: string;
  /** Where spans go: an OTLP/HTTP exporter in production, an in-memory one in tests. */
  exporter: SpanExporter;
  /** Export each span as it ends (tests); default: batched. */
  simple?: boolean;
}

/** Turns tracing on for this process. */
export async function startTracing(opts: TracingOptions): Promise<TracingHandle> {
  const [{ AsyncLocalStorageContextManager }, { W3CTraceContextPropagator }, { resourceFromAttributes }, { BasicTracerProvider, BatchSpanProcessor, SimpleSpanProcessor }] = await Promise.all([
    import('@opentelemetry/context-async-hooks'),
    import('@opentelemetry/core'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/sdk-trace-base'),
  ]);
  propagator ??= new W3CTraceContextPropagator();
  const contextManager = new AsyncLocalStorageContextManager().enable();
  context.setGlobalContextManager(contextManager);
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': 'openshell-ha-sidecar', 'service.version': opts.version, 'service.instance.id': opts.serviceInstanceId }),
    spanProcessors: [opts.simple ? new SimpleSpanProcessor(opts.exporter) : new BatchSpanProcessor(opts.exporter)],
  });
  tracer = provider.getTracer('openshell-ha-sidecar', opts.version);
  return {
    async shutdown() {
      tracer = undefined;
      await provider.shutdown().catch(() => undefined);
      contextManager.disable();
      context.disable();
    },
  };
}

/** Tracing as configured (`--tracing otlp --otlp-traces-url …`); undefined when off. */
export async function startConfiguredTracing(cfg: { tracing: 'off' | 'otlp'; otlpTracesUrl?: string | undefined; replicaId: string }, version: string): Promise<TracingHandle | undefined> {
  if (cfg.tracing !== 'otlp' || !cfg.otlpTracesUrl) return undefined;
  // Loaded only when asked for: a sidecar with tracing off never touches the exporter.
  const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-http');
  return startTracing({ serviceInstanceId: cfg.replicaId, version, exporter: new OTLPTraceExporter({ url: cfg.otlpTracesUrl }) });
}

/** A span under `parent` (default: the active context), or undefined while tracing is off. */
export function startSpan(name: string, attributes: Attributes, opts: { parent?: Context | undefined; kind?: SpanKind } = {}): Span | undefined {
  if (tracer === undefined) return undefined;
  return tracer.startSpan(name, { attributes, kind: opts.kind ?? SpanKind.INTERNAL }, opts.parent ?? context.active());
}

export function endSpan(span: Span | undefined, error?: string): void {
  if (span === undefined) return;
  if (error !== undefined) span.setStatus({ code: SpanStatusCode.ERROR, message: error });
  span.end();
}

/** Runs `fn` with `span` as the active span (plain call when there is none). */
export function withSpan<T>(span: Span | undefined, fn: () => T): T {
  if (span === undefined) return fn();
  return context.with(trace.setSpan(context.active(), span), fn);
}

/** `fn` bound to the active context, for callbacks Node calls later; `fn` itself while tracing is off. */
export function bindContext<F extends (...args: never[]) => unknown>(fn: F): F {
  if (tracer === undefined) return fn;
  return context.bind(context.active(), fn);
}

/** `traceparent` (and `tracestate`) for a request made on behalf of `span`; empty while off. */
export function traceHeaders(span: Span | undefined): Readonly<Record<string, string>> {
  if (span === undefined || propagator === undefined) return NO_HEADERS;
  const carrier: Record<string, string> = {};
  propagator.inject(trace.setSpan(context.active(), span), carrier, {
    set: (c, k, v) => {
      c[k] = v;
    },
  });
  return carrier;
}

/** Trace headers for the active span (e.g. a peer request served inside its `ohs.peer` span). */
export function activeTraceHeaders(): Readonly<Record<string, string>> {
  if (tracer === undefined) return NO_HEADERS;
  return traceHeaders(trace.getActiveSpan());
}

/** Adds attributes to the active span (e.g. the sandbox id once the first message named it). */
export function annotateActive(attributes: Attributes): void {
  if (tracer === undefined) return;
  trace.getActiveSpan()?.setAttributes(attributes);
}

/** The remote parent named by a request's `traceparent`, when tracing is on and the header is valid. */
export function extractParent(headers: http2.IncomingHttpHeaders): Context | undefined {
  if (tracer === undefined || propagator === undefined || headers.traceparent === undefined) return undefined;
  return propagator.extract(context.active(), headers, {
    get: (c, k) => {
      const v = c[k];
      return Array.isArray(v) ? v[0] : v;
    },
    keys: (c) => Object.keys(c),
  });
}

/**
 * A SERVER span for one stream, ended when the stream closes: a public request (its client's
 * `traceparent` honoured as parent) or a peer request (the ingress sidecar's forward span as parent).
 */
export function streamSpan(name: string, stream: { once(event: 'close', fn: () => void): unknown }, headers: http2.IncomingHttpHeaders, attributes: Attributes): Span | undefined {
  if (tracer === undefined) return undefined;
  const span = startSpan(name, attributes, { parent: extractParent(headers), kind: SpanKind.SERVER });
  stream.once('close', () => span?.end());
  return span;
}

export { SpanKind };
