// A rendered multi-document manifest stream, split so that every document keeps its exact bytes:
// the post-renderer rewrites one document and must hand every other one back untouched
// (deployment reference §1.5, §3.10 invariant 1). Pure: text in, text out.
import { isMap, parseAllDocuments, type Document } from 'yaml';

/** Helm 4 puts this annotation on every document it sends to a postrenderer/v1 plugin (reference §1.2). */
export const HELM4_FILENAME_ANNOTATION = 'postrenderer.helm.sh/postrender-filename';
export const HELM_HOOK_ANNOTATION = 'helm.sh/hook';

/**
 * `helm3`: documents carry `# Source:` comments (Helm 3, and `helm template` output).
 * `helm4`: documents carry the filename annotation and no `# Source:` comments.
 * `plain`: neither (kubectl-style input).
 */
export type StreamShape = 'helm3' | 'helm4' | 'plain';

export interface StreamDoc {
  readonly index: number;
  /** The document's exact source bytes, including its `---` line and leading comments. */
  readonly text: string;
  readonly doc: Document.Parsed;
  /** Parse errors (YAML 1.1); a document with errors is passed through untouched. */
  readonly errors: readonly string[];
  /** Only comments (e.g. a template that rendered to its SPDX header): passed through untouched. */
  readonly commentOnly: boolean;
  readonly kind: string | undefined;
  readonly name: string | undefined;
  readonly namespace: string | undefined;
  readonly annotations: Readonly<Record<string, string>>;
  readonly isHook: boolean;
}

export interface ManifestStream {
  readonly docs: readonly StreamDoc[];
  readonly shape: StreamShape;
  /** The whole input, CRLF normalised: the concatenation of every document's `text`. */
  readonly source: string;
}

/**
 * Splits `source` into documents whose `text`s, concatenated, give `source` back exactly. CRLF is
 * normalised to LF first: Kubernetes and Helm 4's kyaml do the same, and the output must be LF only.
 */
export function parseManifestStream(raw: string): ManifestStream {
  const source = raw.replace(/\r\n/g, '\n');
  const parsed = parseAllDocuments(source, { version: '1.1' });
  const list = Array.isArray(parsed) ? parsed : [];
  // A document's range starts at its `---` (or, for the first one, at its contents): partitioning
  // the source at those starts keeps comments between documents with one of them and loses no byte.
  const starts = list.map((d, i) => (i === 0 ? 0 : d.range[0]));
  const docs: StreamDoc[] = list.map((doc, i) => {
    const text = source.slice(starts[i], i + 1 < starts.length ? starts[i + 1] : source.length);
    const errors = doc.errors.map((e) => e.message);
    const contents = doc.contents;
    const commentOnly = errors.length === 0 && (contents === null || (!isMap(contents) && (contents as { value?: unknown }).value === null));
    const meta = errors.length === 0 && isMap(contents) ? readMeta(doc) : { annotations: {} };
    return {
      index: i,
      text,
      doc,
      errors,
      commentOnly,
      kind: meta.kind,
      name: meta.name,
      namespace: meta.namespace,
      annotations: meta.annotations,
      isHook: meta.annotations[HELM_HOOK_ANNOTATION] !== undefined,
    };
  });
  return { docs, shape: detectShape(docs), source };
}

function readMeta(doc: Document.Parsed): { kind?: string; name?: string; namespace?: string; annotations: Record<string, string> } {
  const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
  const annotations: Record<string, string> = {};
  const ann = doc.getIn(['metadata', 'annotations']);
  if (isMap(ann)) {
    for (const pair of ann.items) {
      const key = (pair.key as { value?: unknown } | null)?.value;
      const value = (pair.value as { value?: unknown } | null)?.value;
      if (typeof key === 'string') annotations[key] = value === null || value === undefined ? '' : String(value);
    }
  }
  return {
    kind: str(doc.get('kind')),
    name: str(doc.getIn(['metadata', 'name'])),
    namespace: str(doc.getIn(['metadata', 'namespace'])),
    annotations,
  };
}

function detectShape(docs: readonly StreamDoc[]): StreamShape {
  if (docs.some((d) => d.annotations[HELM4_FILENAME_ANNOTATION] !== undefined)) return 'helm4';
  if (docs.some((d) => /^# Source: /m.test(d.text))) return 'helm3';
  return 'plain';
}

/** Joins document texts back into a stream, adding a newline only where a piece lacks one before the next. */
export function joinDocuments(texts: readonly string[]): string {
  let out = '';
  for (const t of texts) {
    if (t === '') continue;
    if (out !== '' && !out.endsWith('\n')) out += '\n';
    out += t;
  }
  return out;
}
