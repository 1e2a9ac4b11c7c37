import js from '@eslint/js';
import tseslint from 'typescript-eslint';

const restrict = (patterns) => ({ 'no-restricted-imports': ['error', { patterns }] });
const notCli = {
  group: ['**/nbd/**', '**/commands/**', '**/serve/**', '@oclif/*', 'ora', 'cli-table3'],
  message: 'src/format is a library: no CLI, serving or NBD imports.',
};
const notSdk = {
  group: ['@aws-sdk/*', '@smithy/*'],
  message: 'Only src/format/store/s3*.ts talks to the AWS SDK.',
};

const commandsAreNotLibraries = {
  group: ['**/commands/**'],
  message: 'Only oclif loads commands: move what is shared into a library module.',
};

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.tmp/**', 'bench-results/**', 'native/build/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_' },
      ],
      '@typescript-eslint/consistent-type-imports': 'error',
    },
  },
  // oclif loads src/commands/ by directory; nothing under src/ imports a command, commands
  // included (what two commands share is a library: src/cli, src/serve, src/format). Tests may
  // import a command's result type. The blocks below repeat the rule in their own lists.
  {
    files: ['src/**/*.ts'],
    ignores: ['src/commands/**'],
    rules: restrict([commandsAreNotLibraries]),
  },
  {
    files: ['src/commands/*.ts'],
    rules: restrict([{ regex: '^\\./', message: commandsAreNotLibraries.message }]),
  },
  {
    files: ['src/commands/*/*.ts'],
    // ./x.js and ../x.js are commands; ../../x.js is src/.
    rules: restrict([{ regex: '^\\.\\.?/(?!\\.\\./)', message: commandsAreNotLibraries.message }]),
  },
  // Layering: the format library never reaches the CLI, the NBD server or CLI libraries;
  // inside it, codecs are pure, the index knows no engine, and stores know nothing above them.
  // (Each block repeats the library rule: a later block's no-restricted-imports replaces it.)
  { files: ['src/format/**/*.ts'], rules: restrict([notCli, notSdk]) },
  { files: ['src/format/store/s3*.ts'], rules: restrict([notCli]) },
  {
    files: ['src/format/codec/**/*.ts'],
    rules: restrict([
      notCli,
      notSdk,
      {
        group: ['**/store/**', '**/index/**', '**/volume/**', '**/keys.js', '**/errors.js'],
        message: 'Codecs are pure: bytes in, records out (DecodeError for damage).',
      },
    ]),
  },
  {
    files: ['src/format/index/**/*.ts'],
    rules: restrict([
      notCli,
      notSdk,
      {
        group: ['**/volume/**', '**/store/*', '!**/store/types.js'],
        message: 'The index reads segments through its SegmentReader interface only.',
      },
    ]),
  },
  {
    files: ['src/format/store/**/*.ts'],
    ignores: ['src/format/store/s3*.ts'],
    rules: restrict([
      notCli,
      notSdk,
      {
        group: ['**/codec/**', '**/index/**', '**/volume/**', '**/keys.js'],
        message: 'Stores move bytes; they know nothing of the volume format.',
      },
    ]),
  },
  {
    files: ['src/format/store/s3*.ts'],
    rules: restrict([
      notCli,
      {
        group: ['**/codec/**', '**/index/**', '**/volume/**', '**/keys.js'],
        message: 'Stores move bytes; they know nothing of the volume format.',
      },
    ]),
  },
  // hyper doctor's checks: a library over src/format/store (the SDK stays in s3*.ts), no CLI.
  {
    files: ['src/doctor/**/*.ts'],
    rules: restrict([commandsAreNotLibraries, notSdk, notCli]),
  },
  // The NBD server depends only on node:* and its own BlockDevice seam.
  {
    files: ['src/nbd/**/*.ts'],
    rules: restrict([
      {
        group: [
          '**/format/**',
          '**/commands/**',
          '**/errors.js',
          '@oclif/*',
          'ora',
          'cli-table3',
          '@aws-sdk/*',
        ],
        message: 'src/nbd talks to volumes only through its BlockDevice interface.',
      },
    ]),
  },
  // The serving library: volumes (src/format) over NBD (src/nbd), for the serve command and
  // anything else that serves volumes; it never reaches the CLI.
  {
    files: ['src/serve/**/*.ts'],
    rules: restrict([
      {
        group: [
          '**/commands/**',
          '**/cli/**',
          '**/base-command.js',
          '**/flags.js',
          '@oclif/*',
          'ora',
          'cli-table3',
        ],
        message: 'src/serve is a library: it uses src/format, src/nbd and src/errors.ts, no CLI.',
      },
      notSdk,
    ]),
  },
  {
    files: ['bin/**/*.js', 'scripts/**/*.js'],
    languageOptions: { globals: { process: 'readonly', console: 'readonly' } },
  },
);
