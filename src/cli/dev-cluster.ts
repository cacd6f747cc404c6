// placeholder, replaced below
export async function runDevCluster(_argv: string[]): Promise<void> {
  throw new Error('not yet');
}
