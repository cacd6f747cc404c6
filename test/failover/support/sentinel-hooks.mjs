// Module hook for sentinel-shim.mjs: `ioredis` imported from the sidecar's src/ resolves to the wrapper.
const wrapper = new URL('./ioredis-sentinel.mjs', import.meta.url).href;

export async function resolve(specifier, context, nextResolve) {
  if (specifier === 'ioredis' && context.parentURL && context.parentURL.includes('/src/')) {
    return { url: wrapper, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}
