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

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.tmp/**', 'bench-results/**'] },
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
  {
    files: ['bin/**/*.js', 'scripts/**/*.js'],
    languageOptions: { globals: { process: 'readonly', console: 'readonly' } },
  },
);
