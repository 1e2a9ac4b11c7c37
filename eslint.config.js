import js from '@eslint/js';
import tseslint from 'typescript-eslint';

const restrict = (patterns) => ({ 'no-restricted-imports': ['error', { patterns }] });

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
  // Layering: the format library never reaches the CLI, the NBD server or CLI libraries.
  {
    files: ['src/format/**/*.ts'],
    rules: restrict([
      {
        group: ['**/nbd/**', '**/commands/**', '@oclif/*', 'ora', 'cli-table3'],
        message: 'src/format is a library: no CLI or NBD imports.',
      },
      {
        group: ['@aws-sdk/*', '@smithy/*'],
        message: 'Only src/format/store/s3*.ts talks to the AWS SDK.',
      },
    ]),
  },
  {
    files: ['src/format/store/s3*.ts'],
    rules: restrict([
      {
        group: ['**/nbd/**', '**/commands/**', '@oclif/*', 'ora', 'cli-table3'],
        message: 'src/format is a library: no CLI or NBD imports.',
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
