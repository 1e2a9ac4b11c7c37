import { MemStore } from '../../../../src/format/store/mem.js';
import { storeConformance } from '../../../helpers/store-conformance.js';

storeConformance({
  name: 'mem://',
  pageSize: 7,
  md5Etags: true,
  make: () => {
    const s = MemStore.isolated('mem://conformance/');
    s.pageSize = 7;
    return Promise.resolve(s);
  },
});
