// Module hook for sentinel-shim.mjs: `ioredis` imported from the sidecar's own src/ resolves to the
// wrapper; everything else (the wrapper itself included) gets the real package.
const wrapper = new URL('./ioredis-sentinel.mjs', import.meta.url).href;
const sidecarSrc = new URL('../../../src/', import.meta.url).href;

export async function resolve(specifier, context, nextResolve) {
  if (specifier === 'ioredis' && context.parentURL?.startsWith(sidecarSrc)) {
    return { url: wrapper, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}
